"""The teacher's decode step with the student's treatment, so that speed ratios are fair.

`TeacherGraphDecoder` decodes a plain `transformers` causal LM over transformers' `StaticCache` (keys and
values preallocated, written in place at a position kept on the device), with the attention of one query
over the static cache computed by the same function as the student's FA heads (`decode_attention`,
registered as an attention implementation for the decode step only), the forward optionally compiled
with `torch.compile`, and the whole step captured in one CUDA graph on CUDA. Prefill runs the model's own
forward into a dynamic cache (SDPA, causal), which `load` copies into the static cache: prefilling
through a static cache would build a mask over every slot for every prompt token.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, StaticCache

from hydrahead_lit.modeling.decode_step import attention_block, decode_attention
from hydrahead_lit.modeling.static_cache import SLOT_MULTIPLE

logger = logging.getLogger("hydrahead_lit")

DECODE_ATTENTION = "hydrahead_decode"


def _decode_attention_forward(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor, scaling: float | None = None,
    dropout: float = 0.0, **kwargs: Any,
) -> tuple[Tensor, None]:  # fmt: skip
    """transformers attention interface: one query position over all static slots; mask [B, 1, 1, L] bool."""
    if query.shape[2] != 1 or attention_mask is None or attention_mask.dtype != torch.bool:
        raise ValueError(f"'{DECODE_ATTENTION}' attends one query position with a boolean [B, 1, 1, L] mask")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = decode_attention(query, key, value, attention_mask[:, 0, 0], scaling, attention_block(key.shape[2]))
    return out, None


AttentionInterface.register(DECODE_ATTENTION, _decode_attention_forward)


class TeacherGraphDecoder:
    """Single-token steps of a `transformers` model over a `StaticCache` of `batch` x `capacity` slots."""

    def __init__(self, model: nn.Module, batch: int, capacity: int, compile: bool | None = None) -> None:
        text = model.config.get_text_config()
        param = next(model.parameters())
        capacity = -(-capacity // SLOT_MULTIPLE) * SLOT_MULTIPLE  # as the student's: equal blocks for P @ V
        self.model, self.batch, self.capacity, self.device = model, batch, capacity, param.device
        self.cache = StaticCache(config=model.config, max_cache_len=capacity)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.cache.early_initialization(batch, kv_heads, head_dim, param.dtype, param.device)
        self.key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros((), dtype=torch.long, device=self.device)
        self.slots = torch.arange(capacity, device=self.device)
        self.compiled = self.device.type == "cuda" if compile is None else compile
        self._forward = torch.compile(self._step_body, dynamic=False) if self.compiled else self._step_body
        self.graph: torch.cuda.CUDAGraph | None = None
        self._logits: Tensor | None = None
        if self.device.type == "cuda":
            self._capture()

    def _step_body(self, tokens: Tensor, pos: Tensor) -> Tensor:
        B = tokens.shape[0]
        mask = (self.slots <= pos)[None, None, None, :].expand(B, 1, 1, -1)
        out = self.model(
            input_ids=tokens, position_ids=pos.view(1, 1).expand(B, 1), attention_mask=mask,
            use_cache=True, logits_to_keep=1, **{self.key: self.cache},
        )  # fmt: skip
        pos.add_(1)
        return out.logits[:, -1]

    def _run(self) -> Tensor:
        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = DECODE_ATTENTION  # looked up per forward: only the decode step sees it
        try:
            return self._forward(self.tokens, self.pos)
        finally:
            config._attn_implementation = before

    @torch.no_grad()
    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                for _ in range(3):
                    self._run()
            except Exception as err:  # a compiler failure: capture the uncompiled step
                if not self.compiled:
                    raise
                logger.warning(
                    "compiling the teacher's step failed (%s: %s); it runs uncompiled", type(err).__name__, err
                )
                self._forward, self.compiled = self._step_body, False
                for _ in range(3):
                    self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._logits = self._run()
        self.pos.zero_()

    def load(self, dynamic: Any, num_tokens: int, rows: slice | None = None) -> None:
        """Copy a prefilled dynamic cache (`num_tokens` tokens, batch 1 or the rows' count) into `rows` of the
        static cache (all by default) and place the next token at slot `num_tokens`."""
        if num_tokens + 1 > self.capacity:
            raise ValueError(f"{num_tokens} prefilled tokens leave no slot to decode into (capacity {self.capacity})")
        rows = slice(None) if rows is None else rows
        for src, dst in zip(dynamic.layers, self.cache.layers):
            dst.keys[rows, :, :num_tokens].copy_(src.keys)
            dst.values[rows, :, :num_tokens].copy_(src.values)
            dst.cumulative_length.fill_(num_tokens)
        self.pos.fill_(num_tokens)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Decode one token per row: tokens [B, 1] -> logits [B, V] (overwritten by the next step on CUDA)."""
        self.tokens.copy_(tokens)
        if self.graph is not None:
            self.graph.replay()
            return self._logits
        return self._run()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))
