"""`AlignmentModule` (stage 1): attention transfer onto LA twins, all layers in parallel.

The student is `hh.convert(teacher, None, twins=True)`: every head keeps the teacher's FA path (which
alone makes the layer output, so every layer sees the teacher's own input) and gets a Gated DeltaNet
twin fed the detached layer input. The loss is the mean over layers and heads of the per-head MSE
between twin and teacher head, normalised by the teacher head's variance. Only LA and fusion
parameters train by default. The twin student holds the teacher's weights itself, so no separate
teacher is kept after conversion.

`alignment_error` ([layers, heads], an exponential moving average of the per-head error over
training steps, averaged across ranks) is what the head-selection callback reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import hydrahead_lit as hh
from hydrahead_lit.lit.base import StageModule
from hydrahead_lit.lit.linear_losses import logit_losses
from hydrahead_lit.lit.losses import head_alignment_loss
from hydrahead_lit.lit.models import load_student, load_teacher, student_spec, teacher_config
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.probe import AttentionProbe

LA_AND_FUSION = (r"\.self_attn\.la\.", r"\.self_attn\.fusion\.")


class AlignmentModule(StageModule):
    stage = "alignment"
    default_trainable = LA_AND_FUSION

    def __init__(
        self,
        teacher: str,
        init_from: str | None = None,
        la: dict[str, Any] | None = None,
        error_ema: float = 0.9,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            teacher: local directory of the teacher (Hugging Face format).
            init_from: continue from an exported stage-1 twin student instead of converting the teacher.
            la: options of the LA heads (`hh.LAConfig` fields: use_rope, short_conv, output_gate, ...).
            error_ema: decay of the running per-(layer, head) alignment error read by head selection.
            chunk_size: tokens per chunk when validation measures the all-LA perplexity.
            **kwargs: see `StageModule` (lr, warmup_steps, trainable, ...).
        """
        super().__init__(**kwargs)
        config = teacher_config(teacher)
        if init_from is not None and not student_spec(init_from).get("twins"):
            raise ValueError(f"stage 1 continues only from a stage-1 twin student; {init_from} is a converted student")
        if not 0.0 <= error_ema < 1.0:
            raise ValueError(f"error_ema must be in [0, 1), got {error_ema}")
        self.la_config = hh.LAConfig.from_dict(la)
        self.teacher_path, self.init_from = teacher, init_from
        shape = (config.num_hidden_layers, config.num_attention_heads)
        self.register_buffer("alignment_error", torch.full(shape, float("nan")))

    @property
    def tokenizer_source(self) -> str | None:
        return self.teacher_path

    def _build_models(self) -> None:
        if self.init_from is not None:
            self.student = load_student(self.init_from, self.hparams.dtype)
        else:
            teacher = load_teacher(self.teacher_path, self.hparams.dtype)
            self.student = hh.convert(teacher, None, la_config=self.la_config, twins=True, inplace=True)
        self.student.train()

    def _attention_layers(self) -> list:
        return [layer.self_attn for layer in decoder_layers(self.student)]

    def _alignment(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The probe lives for this step only: its pairs (and their graph) go when the loss is computed.
        probe = AttentionProbe(alignment=True)
        self.student(input_ids=x, use_cache=False, logits_to_keep=1, attention_probe=probe)
        return head_alignment_loss(probe.alignment_pairs(len(self._attention_layers())))

    def _update_error(self, errors: Tensor) -> None:
        errors = self.trainer.strategy.reduce(errors.to(self.alignment_error), reduce_op="mean")
        ema = self.hparams.error_ema
        fresh = torch.isnan(self.alignment_error)
        self.alignment_error.copy_(torch.where(fresh, errors, ema * self.alignment_error + (1 - ema) * errors))

    def _loss(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        x, y, mask = self.split_batch(batch)
        loss, errors = self._alignment(x)
        self.log(f"{prefix}/align_loss", loss, prog_bar=prefix == "train", sync_dist=prefix == "val")
        if prefix == "train":
            self._update_error(errors)
            for i, e in enumerate(self.alignment_error.mean(1)):
                self.log(f"align_layer/{i:02d}", e, rank_zero_only=True)
        else:
            # Every head replaced by its twin: the all-LA model stage 1 alone would give.
            self.record_val_ce(self._all_la_ce(x, y, mask), mask.sum())
        return loss

    @torch.no_grad()
    def _all_la_ce(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        every_head = {i: range(attn.num_fa_heads) for i, attn in enumerate(self._attention_layers())}
        out = self.student(
            input_ids=x,
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
            attention_probe=AttentionProbe(patch=every_head),
        )
        hidden = out.hidden_states[-1]
        hp = self.hparams
        _, ce, _ = logit_losses(hidden, self.student.lm_head, y, mask, chunk_size=hp.chunk_size, fused=hp.fused_loss)
        return ce
