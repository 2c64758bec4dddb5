"""What every stage module shares: trainable-parameter patterns, the frozen teacher kept out of
checkpoints, FSDP2 in `configure_model`, AdamW with warmup + cosine, and training telemetry
(learning rate, gradient norm, tokens/s on the progress bar, tokens seen).

Stages hand off weights with `init_from` (a student exported by `ExportStudent`, weights only);
`ckpt_path` resumes the *same* run: a checkpoint records its stage, teacher and plan
(`hydrahead_lit.lit.run_record`) and a checkpoint of another run is refused. A resumed run continues
its counters (`train/tokens`) and its TensorBoard curves: the steps the interrupted run logged after
its checkpoint are marked as superseded, so TensorBoard shows each step once.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric

from hydrahead_lit.lit.run_record import COUNTERS_KEY, RECORD_KEY, STAGE_KEY, check_checkpoint, make_record
from hydrahead_lit.parallel import mixed_precision_dtype, parallelize

__all__ = ["STAGE_KEY", "StageModule", "select_parameters", "summarize_names"]


def select_parameters(model: nn.Module, trainable: list[str], frozen: list[str]) -> list[str]:
    """Set requires_grad on `model`: names matching a `trainable` regex and no `frozen` regex train.

    Returns the trainable names; ValueError when nothing would train.
    """
    pats_t = [re.compile(p) for p in trainable]
    pats_f = [re.compile(p) for p in frozen]
    names = []
    for name, p in model.named_parameters():
        on = any(r.search(name) for r in pats_t) and not any(r.search(name) for r in pats_f)
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        raise ValueError(
            f"no parameter matches trainable={trainable} (minus frozen={frozen}); "
            f"example names: {[n for n, _ in list(model.named_parameters())[:4]]}"
        )
    return names


def summarize_names(names: list[str], limit: int = 12) -> str:
    """Parameter names with layer indices folded (`model.layers.*.self_attn.la.q_proj.weight`)."""
    folded = sorted({re.sub(r"\.\d+\.", ".*.", n) for n in names})
    more = f" ... (+{len(folded) - limit} more)" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


class StageModule(L.LightningModule):
    """Base class of the stage modules; subclasses build `self.student` (and `self.teacher`) in
    `_build_models` and compute the loss in `_loss`."""

    stage: ClassVar[str] = "base"
    default_trainable: ClassVar[tuple[str, ...]] = (".*",)

    def __init__(
        self,
        trainable: list[str] | None = None,
        frozen: list[str] | None = None,
        lr: float = 1e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        activation_checkpointing: bool = False,
        mixed_precision: str | None = None,
        dtype: str = "float32",
        fused_loss: bool = True,
        compile_blocks: bool = False,
    ) -> None:
        """
        Args:
            trainable: regexes (searched in student parameter names) of what trains; None = the stage default.
            frozen: regexes of parameters kept frozen even if `trainable` matches them.
            lr: peak learning rate of AdamW (linear warmup, then cosine down to `lr * min_lr_ratio`).
            min_lr_ratio: final learning rate as a fraction of `lr`.
            warmup_steps: linear warmup steps.
            weight_decay: AdamW weight decay on matrices (never on norms, gains and biases).
            betas: AdamW betas.
            activation_checkpointing: recompute each student decoder block in the backward pass.
            mixed_precision: FSDP2 compute dtype ("bf16") under ModelParallelStrategy; None = parameter dtype.
            dtype: dtype the student is loaded in (keep float32 master weights for training).
            fused_loss: logit losses with their gradients taken chunk by chunk in the forward pass
                (`lit/linear_losses.py`); False runs the autograd reference (`chunked_logit_losses`).
            compile_blocks: `torch.compile` each decoder block of student and teacher (`parallel.py`); the
                first steps then include compilation.
        """
        super().__init__()
        self.save_hyperparameters()
        mixed_precision_dtype(mixed_precision)  # fail early on a bad name
        self.trainable = list(trainable) if trainable is not None else list(self.default_trainable)
        self.frozen = list(frozen or [])
        self.strict_loading = False  # the teacher is not in checkpoints
        self.student: nn.Module | None = None
        self.teacher: nn.Module | None = None
        self.trainable_names: list[str] = []
        self._tokens_seen = 0
        self._t_last: float | None = None
        self._tps: float | None = None
        self.val_ce = MeanMetric()  # token-weighted next-token CE of the student on validation data

    # ----- models -------------------------------------------------------------------------------------
    def _build_models(self) -> None:
        raise NotImplementedError

    def configure_model(self) -> None:
        if self.student is not None:  # called again by validate/test after fit
            return
        self._build_models()
        self.trainable_names = select_parameters(self.student, self.trainable, self.frozen)
        if self.teacher is not None:
            self.teacher.requires_grad_(False).eval()
        n_train = sum(p.numel() for n, p in self.student.named_parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.student.parameters())
        rank_zero_info(
            f"[{self.stage}] trainable parameters: {n_train:,} of {n_all:,} ({n_train / n_all:.1%}) "
            f"in {len(self.trainable_names)} tensors: {summarize_names(self.trainable_names)}"
        )
        mesh = None
        if self._device_mesh is not None:
            mesh = self.device_mesh["data_parallel"]
        parallelize(
            self.student,
            self.teacher,
            mesh,
            activation_checkpointing=self.hparams.activation_checkpointing,
            mixed_precision=self.hparams.mixed_precision,
            compile=self.hparams.compile_blocks,
        )

    def train(self, mode: bool = True) -> StageModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # Lightning puts the whole module in train mode each epoch
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state without the frozen teacher (it is rebuilt from its path)."""
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in sd if k.startswith(f"{prefix}teacher.")]:
            del sd[key]
        return sd

    # ----- what a checkpoint records, and resuming -----------------------------------------------------
    def _record_teacher(self) -> str | None:
        """The teacher this run distils from (None: none is used)."""
        return getattr(self, "teacher_path", None)

    def _record_plan(self) -> dict | None:
        """The head plan of the student this run trains (None: the stage-1 twin student)."""
        return None

    def run_record(self) -> dict[str, Any]:
        """Stage, teacher and plan of this run, as stored in its checkpoints (see `run_record.py`)."""
        return make_record(self.stage, type(self), self._record_teacher(), self._record_plan(),
                           getattr(self, "model_config", None))  # fmt: skip

    @property
    def model_config_dict(self) -> dict[str, Any]:
        """`config.json` entries of the model this stage trains, read without loading weights (the command
        line checks `max_position_embeddings` and `vocab_size` against the data before fit)."""
        from hydrahead_lit.lit.models import read_model_config, teacher_config

        init_from, teacher = getattr(self, "init_from", None), getattr(self, "teacher_path", None)
        if init_from is not None:  # a student export: the teacher's config plus the plan
            return read_model_config(init_from, "init_from")
        if teacher is not None:
            return teacher_config(teacher).to_dict()
        model_config = getattr(self, "model_config", None)
        if model_config is not None:  # a model trained from scratch: its config with the library's defaults
            from transformers import AutoConfig

            cfg = dict(model_config)
            return AutoConfig.for_model(cfg.pop("model_type"), **cfg).to_dict()
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict")
        if isinstance(sd, dict):
            for key in [k for k in sd if k.startswith("teacher.")]:
                del sd[key]
        checkpoint[STAGE_KEY] = self.stage
        checkpoint[RECORD_KEY] = self.run_record()
        checkpoint[COUNTERS_KEY] = {"tokens": self._tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint(checkpoint, self.run_record())
        self._tokens_seen = int(checkpoint.get(COUNTERS_KEY, {}).get("tokens", 0))

    def on_fit_start(self) -> None:
        # The frozen teacher stays in eval mode on purpose; Lightning warns about every eval-mode module.
        # Silence exactly that warning, and only when the teacher's modules are the only ones in eval mode.
        eval_modules = [name for name, m in self.named_modules() if not m.training]
        if eval_modules and all(name == "teacher" or name.startswith("teacher.") for name in eval_modules):
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(eval_modules)} module\(s\) in eval mode", category=PossibleUserWarning
            )

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None:
            self._supersede_logged_steps(self.trainer.global_step)

    def _supersede_logged_steps(self, step: int) -> None:
        """Mark TensorBoard events at `step` and later (logged by the interrupted run after its checkpoint)
        as superseded: TensorBoard drops older events from `step` on when it reads a session start there."""
        if not self.trainer.is_global_zero:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment._get_file_writer()
                writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    # ----- batches and losses -------------------------------------------------------------------------
    @staticmethod
    def split_batch(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs [B, T], next-token targets [B, T], target mask [B, T]) from `input_ids` [B, T+1]."""
        ids = batch["input_ids"]
        mask = batch.get("loss_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        return ids[:, :-1], ids[:, 1:], mask[:, 1:]

    def _loss(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch, "train")
        self._log_throughput(batch["input_ids"])
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("train/lr", sched.get_last_lr()[0], rank_zero_only=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._loss(batch, "val")

    def record_val_ce(self, ce: Tensor, tokens: Tensor) -> None:
        self.val_ce.update(ce.detach().float(), weight=tokens.float().clamp_min(1.0))

    def on_validation_epoch_end(self) -> None:
        if self.val_ce.update_count:
            ce = self.val_ce.compute()
            self.log("val/ce", ce, sync_dist=False)
            self.log("val/ppl", ce.exp(), prog_bar=True, sync_dist=False)
        self.val_ce.reset()

    @property
    def tokenizer_source(self) -> str | None:
        """Where the tokenizer saved next to an exported student comes from (a local dir or "demo")."""
        return None

    def _log_throughput(self, ids: Tensor) -> None:
        now = time.perf_counter()
        tokens = (ids.shape[1] - 1) * ids.shape[0] * max(1, self.trainer.world_size)
        self._tokens_seen += tokens
        if self._t_last is not None:
            tps = tokens / max(now - self._t_last, 1e-9)
            self._tps = tps if self._tps is None else 0.9 * self._tps + 0.1 * tps
            self.log("train/tokens_per_s", self._tps, prog_bar=True, rank_zero_only=True)
        self.log("train/tokens", float(self._tokens_seen), rank_zero_only=True)
        self._t_last = now

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
                norm = norm.full_tensor()
            self.log("train/grad_norm", norm.float(), rank_zero_only=True)

    # ----- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if p.requires_grad:  # matrices decay; vectors, norms and fusion gains (a [H, D] matrix) do not
                (decay if p.ndim >= 2 and "norm" not in name and "gain" not in name else no_decay).append(p)
        hp = self.hparams
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup, floor = max(0, hp.warmup_steps), hp.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
