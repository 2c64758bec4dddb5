"""`LongContextModule` (stage 3): the converted student trained on longer sequences.

Loss: next-token cross entropy (chunked over tokens, so long sequences never hold full-vocabulary
logits at once), plus optional `kd_weight * KL(teacher || student)` when a teacher is given. Synthetic
retrieval samples are mixed in by the data module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hydrahead_lit.lit.base import StageModule
from hydrahead_lit.lit.linear_losses import logit_losses
from hydrahead_lit.lit.models import load_student, load_teacher, student_spec, teacher_config


class LongContextModule(StageModule):
    stage = "long_context"

    def __init__(
        self,
        init_from: str,
        teacher: str | None = None,
        kd_weight: float = 0.0,
        temperature: float = 1.0,
        chunk_size: int = 1024,
        teacher_dtype: str = "float32",
        max_position_embeddings: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            init_from: the stage-2 student export (`<stage-2 run>/student`).
            teacher: local teacher directory; needed only when kd_weight > 0.
            kd_weight: weight of KL(teacher || student) added to the LM loss.
            temperature: distillation temperature.
            chunk_size: tokens per chunk of the logit losses.
            teacher_dtype: dtype of the frozen teacher.
            max_position_embeddings: the positions the student declares from this stage on (None: the stage-2
                student's). A larger value extends its context to rows of that length: the rotary frequencies
                stay as they are (RoPE extrapolates and this stage trains on the new positions), and the export
                records the new limit, so evaluation accepts lengths up to it.
            **kwargs: see `StageModule` (lr, warmup_steps, trainable, ...).
        """
        super().__init__(**kwargs)
        spec = student_spec(init_from)
        if spec.get("twins"):
            raise ValueError(f"init_from {init_from} is a stage-1 twin student; stage 3 starts from the stage-2 export")
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if kd_weight > 0:
            if teacher is None:
                raise ValueError("kd_weight > 0 needs a teacher path")
            teacher_config(teacher)
        self.init_from, self.teacher_path = init_from, teacher
        self._student_plan = spec["plan"]
        self.positions = _positions(super().model_config_dict, max_position_embeddings, init_from)

    @property
    def model_config_dict(self) -> dict[str, Any]:
        config = super().model_config_dict
        text = config.get("text_config", config)
        text["max_position_embeddings"] = self.positions
        return config

    def _record_teacher(self) -> str | None:
        return self.teacher_path if self.hparams.kd_weight > 0 else None

    def _record_plan(self) -> dict | None:
        return self._student_plan

    @property
    def tokenizer_source(self) -> str | None:
        return self.init_from

    def _build_models(self) -> None:
        hp = self.hparams
        self.student = load_student(self.init_from, hp.dtype).train()
        config = self.student.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        text.max_position_embeddings = self.positions  # written into the export with the rest of the config
        if hp.kd_weight > 0:
            self.teacher = load_teacher(self.teacher_path, hp.teacher_dtype)

    def _loss(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        hp = self.hparams
        x, y, mask = self.split_batch(batch)
        t_hidden = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            t_hidden = t_out.hidden_states[-1]
        s_out = self.student(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        loss, ce, kl = logit_losses(
            s_out.hidden_states[-1], self.student.lm_head, y, mask,
            t_hidden, None if self.teacher is None else self.teacher.lm_head, hp.temperature, hp.chunk_size,
            ce_weight=1.0, kd_weight=hp.kd_weight, fused=hp.fused_loss,
        )  # fmt: skip
        sync = prefix == "val"
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "train", sync_dist=sync)
        self.log(f"{prefix}/ce", ce, sync_dist=sync)
        if self.teacher is not None:
            self.log(f"{prefix}/kl", kl, sync_dist=sync)
        if prefix == "val":
            self.record_val_ce(ce, mask.sum())
        return loss


def _positions(config: dict[str, Any], requested: int | None, init_from: str) -> int:
    """The student's positions after stage 3: the stage-2 export's, or a larger `requested` value."""
    current = config.get("text_config", config).get("max_position_embeddings")
    if requested is None:
        return current
    if not isinstance(requested, int) or requested < 1:
        raise ValueError(f"max_position_embeddings must be a positive number of tokens or null, got {requested!r}")
    if isinstance(current, int) and requested < current:
        raise ValueError(
            f"max_position_embeddings={requested} is below the {current} positions of {init_from}: stage 3 extends "
            "a context, it does not shorten it; drop the setting or raise it"
        )
    return requested
