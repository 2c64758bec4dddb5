"""The stage-2 distillation step as `DistillationModule` runs it, timed, with its cost split; the
measurement machinery `bench_student_step.py` shares (time marks, cells that record failures, batch search).

One step is `DistillationModule._loss` (the frozen teacher's forward without gradients, the student's
forward, then `logit_losses`: KL(teacher || student) and CE a chunk of tokens at a time, each chunk's
gradients taken in the forward pass; with the module's `fused_loss` off, the autograd reference that
recomputes each chunk in the backward pass) followed by `loss.backward()`. The loss weights, the
temperature and the chunk size come from a stage-2 config (`configs/<model>/stage2.yaml`); the student's
activation checkpointing is applied by `hydrahead_lit.parallel.parallelize`, as `configure_model` does.

The split is read from the same step: forward hooks mark where the teacher's and the student's forwards
begin and end, and a gradient hook on the student's final hidden state marks where the loss's backward
hands over to the student's backward. So

- teacher ms = the teacher's forward;
- student ms = the student's forward + its backward from the final hidden state down (recomputation of
  checkpointed blocks included);
- loss ms = the logit losses' forward + their backward (with the reference, the chunks' recomputation).

Their sum is the step up to the batch split and the Python between the marks. Not included: the optimizer step,
gradient clipping and FSDP2's communication and casts (one device, parameters already in the compute
dtype).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from hydrahead_lit.lit.base import select_parameters
from hydrahead_lit.lit.distillation import DistillationModule
from hydrahead_lit.modeling.plan import HeadPlan
from hydrahead_lit.parallel import parallelize

LOSS_KEYS = ("kd_weight", "ce_weight", "hidden_weight", "temperature", "chunk_size")


class Clock:
    """Named time marks: CUDA events on a GPU (read after one synchronisation), the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: str, end: str) -> float:
        """Milliseconds from mark `start` to mark `end` (call `sync` first)."""
        missing = [m for m in (start, end) if m not in self.marks]
        if missing:
            raise RuntimeError(f"time mark(s) {missing} were never reached (marks: {sorted(self.marks)})")
        a, b = self.marks[start], self.marks[end]
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def time_ms(
    fn: Callable[[], None], clock: Clock, warmup: int, iters: int, after: Callable[[], None] | None = None
) -> float:
    """Median milliseconds of `fn` over `iters` calls after `warmup` untimed ones (`after` runs untimed)."""
    times = []
    for i in range(warmup + iters):
        clock.marks.clear()
        clock.mark("start")
        fn()
        clock.mark("end")
        clock.sync()
        if i >= warmup:
            times.append(clock.ms("start", "end"))
        if after is not None:
            after()
    return statistics.median(times)


# ----- the stage-2 settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSettings:
    """What the benchmark takes from a stage-2 config: loss options and activation checkpointing."""

    path: str
    loss: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False
    mixed_precision: str | None = None
    seq_len: int | None = None
    batch_size: int | None = None

    def describe(self) -> str:
        loss = ", ".join(f"{k} {v}" for k, v in self.loss.items()) or "the module's defaults"
        data = (
            f"; the config trains at seq_len {self.seq_len}, batch {self.batch_size} per device" if self.seq_len else ""
        )
        return (
            f"stage config `{self.path}`: {loss}; activation checkpointing {self.activation_checkpointing}; "
            f"mixed precision {self.mixed_precision}{data}"
        )


def read_stage_config(path: str | Path, shown_as: str | None = None) -> StageSettings:
    """The loss options of a stage-2 (`DistillationModule`) LightningCLI config; ValueError for any other.
    `shown_as`: the path as the report names it (default: `path`)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"stage config {p} does not exist (give --stage-config configs/<model>/stage2.yaml)")
    raw = yaml.safe_load(p.read_text()) or {}
    model = raw.get("model") or {}
    if not str(model.get("class_path", "")).endswith("DistillationModule"):
        raise ValueError(
            f"{p} configures {model.get('class_path')!r}, not hydrahead_lit.lit.DistillationModule: "
            "give a stage-2 config (configs/<model>/stage2.yaml)"
        )
    init = model.get("init_args") or {}
    data = (raw.get("data") or {}).get("init_args") or {}
    return StageSettings(
        path=shown_as or str(path),
        loss={k: init[k] for k in LOSS_KEYS if k in init},
        activation_checkpointing=bool(init.get("activation_checkpointing", False)),
        mixed_precision=init.get("mixed_precision"),
        seq_len=data.get("seq_len"),
        batch_size=data.get("batch_size"),
    )


# ----- the module ----------------------------------------------------------------------------------------
def manual_plan_spec(plan: HeadPlan) -> dict[str, Any]:
    """The `plan:` entry of a stage-2 config that gives `plan`."""
    return {"method": "manual", "fa_groups": {i: list(g) for i, g in enumerate(plan.fa_groups)}}


def distillation_module(
    teacher: nn.Module,
    student: nn.Module,
    plan: HeadPlan,
    settings: StageSettings,
    checkpointing: bool,
    compile: bool = False,
) -> DistillationModule:
    """A `DistillationModule` holding these (already built) models, prepared as `configure_model` does:
    trainable parameters selected, the teacher frozen, activation checkpointing on the student, and with
    `compile` its decoder blocks compiled (the teacher's are compiled where it is built)."""
    with tempfile.TemporaryDirectory() as tmp:
        teacher.config.save_pretrained(tmp)  # the module reads its teacher's config from a directory
        module = DistillationModule(teacher=tmp, plan=manual_plan_spec(plan), **settings.loss)
    module.teacher, module.student = teacher, student
    select_parameters(student, module.trainable, module.frozen)
    parallelize(student, None, None, activation_checkpointing=checkpointing, compile=compile)
    student.train()
    return module


def freeze_teacher(module: DistillationModule) -> None:
    module.teacher.requires_grad_(False).eval()


def make_batch(vocab_size: int, batch: int, length: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """A training batch as the data module yields it: `input_ids` [B, T+1] (inputs plus next-token targets)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length + 1), generator=gen)
    return {"input_ids": ids.to(device)}


def distillation_step(
    module: DistillationModule, batch: dict[str, Tensor], loss_done: Callable[[], None] | None = None
) -> None:
    """One stage-2 training step's computation: the module's loss, then its backward (`loss_done` in between)."""
    with warnings.catch_warnings():  # self.log() without a Trainer warns and does nothing
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss = module._loss(batch, "train")
    if loss_done is not None:
        loss_done()
    loss.backward()


# ----- the split -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSplit:
    step_ms: float
    teacher_ms: float
    student_ms: float
    loss_ms: float


class SplitMarks:
    """Hooks that put time marks at the boundaries of a distillation step (see the module docstring)."""

    def __init__(self, module: DistillationModule, clock: Clock) -> None:
        self.module, self.clock = module, clock
        self.handles: list[Any] = []

    def __enter__(self) -> SplitMarks:
        mark = self.clock.mark
        teacher, student = self.module.teacher, self.module.student
        self.handles = [
            teacher.register_forward_pre_hook(lambda *_: mark("teacher_start")),
            teacher.register_forward_hook(lambda *_: mark("teacher_end")),
            student.register_forward_pre_hook(lambda *_: mark("student_start")),
            student.register_forward_hook(self._student_done),
        ]
        return self

    def _student_done(self, _m: nn.Module, _args: tuple, output: Any) -> None:
        self.clock.mark("student_end")
        hidden = output.hidden_states[-1]  # the tensor the chunked losses start from
        if hidden.requires_grad:
            hidden.register_hook(lambda _grad: self.clock.mark("loss_backward_end"))

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def split(self) -> StepSplit:
        ms = self.clock.ms
        return StepSplit(
            step_ms=ms("start", "end"),
            teacher_ms=ms("teacher_start", "teacher_end"),
            student_ms=ms("student_start", "student_end") + ms("loss_backward_end", "end"),
            loss_ms=ms("student_end", "loss_end") + ms("loss_end", "loss_backward_end"),
        )


def measure_distillation(
    module: DistillationModule, batch: dict[str, Tensor], clock: Clock, warmup: int, iters: int
) -> StepSplit:
    """The split of the step whose total is the median of `iters` timed steps (after `warmup` untimed)."""
    splits = []
    with SplitMarks(module, clock) as marks:
        for i in range(warmup + iters):
            clock.marks.clear()
            clock.mark("start")
            distillation_step(module, batch, loss_done=lambda: clock.mark("loss_end"))
            clock.mark("end")
            clock.sync()
            if i >= warmup:
                splits.append(marks.split())
            module.student.zero_grad(set_to_none=True)
    splits.sort(key=lambda s: s.step_ms)
    return splits[(len(splits) - 1) // 2]


# ----- cells and the batch search ----------------------------------------------------------------------
@dataclass
class Cell:
    """One measurement: milliseconds and peak GiB, or why there is none."""

    ms: float | None = None
    peak_gib: float | None = None
    error: str | None = None
    split: StepSplit | None = None


def release_memory(models: list[nn.Module], device: torch.device) -> None:
    """What a failed step left behind: gradients, unreachable tensors, the allocator's cached blocks."""
    for m in models:
        m.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_cell(fn: Callable[[], float | StepSplit], device: torch.device, models: list[nn.Module]) -> Cell:
    """Run one measurement; an out-of-memory error or any other failure is recorded, the others still run."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cell = Cell()
    try:
        value = fn()
        cell.split = value if isinstance(value, StepSplit) else None
        cell.ms = value.step_ms if isinstance(value, StepSplit) else value
        cell.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    except torch.OutOfMemoryError:
        cell.error = "OOM"
    except Exception as e:  # noqa: BLE001 (a long GPU run keeps going; the traceback is printed)
        traceback.print_exc()
        cell.error = f"error ({type(e).__name__})"
    if cell.error is not None:
        release_memory(models, device)
    return cell


def step_fits(modules: list[DistillationModule], batch: dict, device: torch.device) -> bool:
    """One distillation step of every student on `batch`; False on an out-of-memory error."""
    models = [m.student for m in modules]
    try:
        for module in modules:
            distillation_step(module, batch)
            module.student.zero_grad(set_to_none=True)
        return True
    except torch.OutOfMemoryError:
        pass
    release_memory(models, device)
    return False


def auto_batch(modules: list[DistillationModule], vocab: int, T: int, start: int, device: torch.device) -> int | None:
    """The largest power of two <= `start` whose distillation step fits at length T (None: not even 1)."""
    b = 1 << (max(1, start).bit_length() - 1)
    while b >= 1:
        if step_fits(modules, make_batch(vocab, b, T, device), device):
            return b
        print(f"  T={T}: batch {b} ran out of memory, halving", flush=True)
        b //= 2
    return None
