"""`StepProgressBar`: one progress line that reads right on a terminal and in a log file.

    [distillation] step 120/400 (30%) | 2,150 tok/s | loss 0.5120 | val/ppl 19.88 | 1:02 elapsed, ETA 2:25

Steps are optimizer steps of the whole run (`trainer.global_step` of `trainer.max_steps`), so a resumed
run continues where its checkpoint left off. On a terminal the line is rewritten in place; when the
output goes to a file or a pipe, a new line is printed every `log_interval` seconds, after each
validation and at the end, so a long stage leaves a readable trace. The ETA is measured on the steps
of this process only (the steps restored from a checkpoint took no time here).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def format_duration(seconds: float) -> str:
    """`1:02`, `12:05`, `3:04:05`; `?` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) >= 100 else f"{value:.4f}"


class StepProgressBar(ProgressBar):
    """Progress of training (steps of the run), validation and testing as plain lines.

    Args:
        log_interval: seconds between lines when the output is not a terminal.
        refresh_interval: seconds between rewrites of the line on a terminal.
        stream: where to write (default: standard output).
    """

    def __init__(self, log_interval: float = 30.0, refresh_interval: float = 0.5, stream: TextIO | None = None) -> None:
        super().__init__()
        self.log_interval = log_interval
        self.refresh_interval = refresh_interval
        self._stream = stream
        self._enabled = True
        self._t0 = 0.0
        self._step0 = 0
        self._last_print = -math.inf
        self._open_line = False  # a terminal line waiting to be rewritten
        self._tag = ""

    # ----- the ProgressBar interface ------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def is_terminal(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._end_line()
        print(*args, file=self.stream, **kwargs)

    # ----- output -------------------------------------------------------------------------------------
    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False

    def _emit(self, text: str, final: bool = False) -> None:
        if not self._enabled:
            return
        if self.is_terminal:
            self.stream.write("\r\033[K" + text)  # rewrite the line in place
            self._open_line = True
            if final:
                self._end_line()
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_print = time.monotonic()

    def _due(self) -> bool:
        interval = self.refresh_interval if self.is_terminal else self.log_interval
        return time.monotonic() - self._last_print >= interval

    # ----- the training line --------------------------------------------------------------------------
    def total_steps(self, trainer: pl.Trainer) -> float:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        return trainer.estimated_stepping_batches

    def metrics_text(self, trainer: pl.Trainer) -> str:
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items() if isinstance(v, (int, float))}
        parts = []
        tps = metrics.pop("train/tokens_per_s", None)
        if tps is not None:
            parts.append(f"{tps:,.0f} tok/s")
        loss_keys = [k for k in metrics if k.startswith("train/") and k.endswith("loss")]
        for key in loss_keys:
            parts.append(f"{key.removeprefix('train/').replace('_', ' ')} {_number(metrics.pop(key))}")
        parts += [f"{k} {_number(v)}" for k, v in metrics.items() if k not in ("v_num",)]
        return " | ".join(parts)

    def train_line(self, trainer: pl.Trainer) -> str:
        step, total = trainer.global_step, self.total_steps(trainer)
        done = step - self._step0
        elapsed = time.monotonic() - self._t0
        eta = elapsed / done * (total - step) if done > 0 and math.isfinite(total) else math.nan
        pct = f" ({step / total:.0%})" if math.isfinite(total) and total > 0 else ""
        total_text = f"{int(total):,}" if math.isfinite(total) else "?"
        head = f"{self._tag}step {step:,}/{total_text}{pct}"
        metrics = self.metrics_text(trainer)
        time_text = f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}"
        return " | ".join(p for p in (head, metrics, time_text) if p)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()
        self._step0 = trainer.global_step
        self._tag = f"[{getattr(pl_module, 'stage', type(pl_module).__name__)}] "
        if trainer.global_step:
            self.print(f"{self._tag}resumed at step {trainer.global_step:,} of {int(self.total_steps(trainer)):,}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._due():
            self._emit(self.train_line(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._emit(self.train_line(trainer), final=True)

    # ----- validation and testing ---------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._enabled:
            return
        val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        text = ", ".join(f"{k} {_number(float(v))}" for k, v in sorted(val.items()))
        self._end_line()
        self._emit(f"{self._tag}validation at step {trainer.global_step:,}: {text or 'no metrics logged'}", final=True)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()
        self._tag = f"[{getattr(pl_module, 'name', None) or type(pl_module).__name__}] "

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self.has_dataloader_changed(dataloader_idx)  # sets the index total_test_batches_current_dataloader reads
        total = self.total_test_batches_current_dataloader
        done = batch_idx + 1
        if self._due() or done == total:
            elapsed = time.monotonic() - self._t0
            eta = elapsed / done * (total - done) if math.isfinite(total) else math.nan
            total_text = f"{int(total)}" if math.isfinite(total) else "?"
            self._emit(f"{self._tag}evaluation job {done}/{total_text} | {format_duration(elapsed)} elapsed, "
                       f"ETA {format_duration(eta)}", final=done == total)  # fmt: skip
