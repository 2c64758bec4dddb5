"""`PretrainModule`: trains a causal LM from a `transformers` config with the LM loss.

Used to make the demo teacher (configs/demo/pretrain_teacher.yaml); any supported family works.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hydrahead_lit.lit.base import StageModule
from hydrahead_lit.lit.linear_losses import logit_losses
from hydrahead_lit.lit.models import load_teacher
from hydrahead_lit.modeling.arch import SUPPORTED_MODEL_TYPES


class PretrainModule(StageModule):
    """LM pre-training of `self.student` (here simply "the model being trained")."""

    stage = "pretrain"

    def __init__(
        self,
        model_config: dict[str, Any],
        tokenizer: str = "demo",
        init_from: str | None = None,
        chunk_size: int = 1024,
        retrieval_tasks: list[str] | None = None,
        retrieval_length: int = 256,
        retrieval_samples: int = 16,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_config: keyword arguments of the `transformers` config, with `model_type` (e.g. qwen3).
            tokenizer: local tokenizer directory, or "demo" for the bundled one (saved next to the export).
            init_from: continue from a saved model directory instead of a random initialisation.
            chunk_size: tokens per chunk of the chunked cross entropy.
            retrieval_tasks: synthetic tasks whose accuracy (greedy, exact answer) is logged after each
                validation as `val/retrieval_<task>` (e.g. [passkey, niah_single]); none by default.
            retrieval_length: length in tokens of those samples.
            retrieval_samples: samples per task.
            **kwargs: see `StageModule` (lr, warmup_steps, trainable, ...).
        """
        super().__init__(**kwargs)
        cfg = dict(model_config)
        if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
            kinds = ", ".join(SUPPORTED_MODEL_TYPES)
            raise ValueError(f"model_config.model_type must be one of {kinds}, got {cfg.get('model_type')!r}")
        from hydrahead_lit.data.prepare import load_tokenizer

        tok = load_tokenizer(tokenizer)
        if cfg.get("vocab_size", 0) < len(tok):
            raise ValueError(f"model_config.vocab_size={cfg.get('vocab_size')} < the tokenizer's {len(tok)} tokens")
        from hydrahead_lit.data.synthetic import TASKS

        unknown = sorted(set(retrieval_tasks or []) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown retrieval_tasks {unknown}; choose among {', '.join(TASKS)}")
        self.model_config = cfg
        self._tokenizer = tokenizer
        self.init_from = init_from
        self.retrieval_tasks = list(retrieval_tasks or [])

    @property
    def tokenizer_source(self) -> str | None:
        return self._tokenizer

    def _build_models(self) -> None:
        if self.init_from:
            self.student = load_teacher(self.init_from, self.hparams.dtype).train().requires_grad_(True)
            return
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = dict(self.model_config)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        self.student = AutoModelForCausalLM.from_config(config)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.retrieval_tasks or self.trainer.sanity_checking:
            return
        from hydrahead_lit.data.prepare import load_tokenizer
        from hydrahead_lit.eval.ruler import run_cell

        tok = load_tokenizer(self._tokenizer)
        was_training = self.student.training
        self.student.eval()
        try:
            for task in self.retrieval_tasks:
                hp = self.hparams
                cell = run_cell(self.student, tok, task, hp.retrieval_length, hp.retrieval_samples, seed=777)
                self.log(f"val/retrieval_{task}", cell["score"] / 100.0, prog_bar=True)
        finally:
            self.student.train(was_training)

    def _loss(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        x, y, mask = self.split_batch(batch)
        out = self.student(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        ce, _, _ = logit_losses(
            out.hidden_states[-1],
            self.student.lm_head,
            y,
            mask,
            chunk_size=self.hparams.chunk_size,
            fused=self.hparams.fused_loss,
        )
        self.log(f"{prefix}/loss", ce, prog_bar=prefix == "train", sync_dist=prefix == "val")
        if prefix == "val":
            self.record_val_ce(ce, mask.sum())
        return ce
