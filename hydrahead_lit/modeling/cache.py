"""The hybrid generation cache: keys/values of FA groups only, recurrent (and conv) state of LA heads.

It is a `transformers` `DynamicCache` whose layers hold, besides the FA groups' keys and values, each
layer's LA state. A layer's token count is tracked explicitly because a layer with no FA group stores
zero-head key tensors, from which `transformers` would read a length of 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class _HybridLayerMixin:
    def _init_hybrid(self) -> None:
        self.num_tokens = 0
        self.la_state: dict[str, Tensor | None] = {"recurrent": None, "conv": None}

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.num_tokens += key_states.shape[-2]
        return super().update(key_states, value_states, *args, **kwargs)

    def advance(self, n: int) -> None:
        """Count `n` tokens in a layer that has no FA group."""
        self.num_tokens += n
        if hasattr(self, "cumulative_length"):  # sliding-window layers size their masks from it
            self.cumulative_length += n

    def get_seq_length(self, *args: Any) -> int:
        return self.num_tokens

    def la_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.la_state.values() if t is not None)

    def kv_nbytes(self) -> int:
        keys, values = getattr(self, "keys", None), getattr(self, "values", None)
        return sum(t.numel() * t.element_size() for t in (keys, values) if isinstance(t, Tensor))

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self.la_state = {k: None if t is None else t[indices] for k, t in self.la_state.items()}

    def reorder_cache(self, beam_idx: Tensor) -> None:
        super().reorder_cache(beam_idx)
        self.la_state = {
            k: None if t is None else t.index_select(0, beam_idx.to(t.device)) for k, t in self.la_state.items()
        }

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.la_state = {
            k: None if t is None else t.repeat_interleave(repeats, dim=0) for k, t in self.la_state.items()
        }

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent LA state cannot be cropped back to an earlier position")


class HybridFullLayer(_HybridLayerMixin, DynamicLayer):
    def __init__(self) -> None:
        super().__init__()
        self._init_hybrid()


class HybridSlidingLayer(_HybridLayerMixin, DynamicSlidingWindowLayer):
    def __init__(self, sliding_window: int) -> None:
        super().__init__(sliding_window=sliding_window)
        self._init_hybrid()


class HybridCache(DynamicCache):
    """Generation cache for a HydraHead student (pass `model.config`)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        window = getattr(text, "sliding_window", None)
        self.layers = [
            HybridSlidingLayer(window) if t == "sliding_attention" and window else HybridFullLayer()
            for t in layer_types
        ]

    def kv_nbytes(self) -> int:
        return sum(layer.kv_nbytes() for layer in self.layers)

    def la_nbytes(self) -> int:
        return sum(layer.la_nbytes() for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes held now: FA keys/values plus LA recurrent and conv states."""
        return self.kv_nbytes() + self.la_nbytes()


def cache_bytes(config: Any, plan: Any, la_cfg: Any, batch: int, seq_len: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of the hybrid cache after `seq_len` tokens, next to the teacher's KV cache.

    KV tensors are stored in `dtype`; the LA recurrent state is float32 ([D, D] per head); the conv
    state keeps the last kernel-1 q/k/v inputs per LA head in `dtype`.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    D = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    el = torch.empty((), dtype=dtype).element_size()
    teacher_kv = 2 * plan.num_layers * plan.num_kv_groups * D * seq_len * batch * el
    kv = 2 * plan.num_fa_groups * D * seq_len * batch * el
    n_la = sum((plan.num_kv_groups - len(g)) * plan.group_size for g in plan.fa_groups)
    la_state = n_la * D * D * 4 * batch
    conv = n_la * 3 * D * max(la_cfg.short_conv - 1, 0) * batch * el
    return {"kv": kv, "la_state": la_state, "conv_state": conv, "total": kv + la_state + conv, "teacher_kv": teacher_kv}
