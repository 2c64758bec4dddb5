"""A static generation cache for a HydraHead student: allocated once for (batch, capacity), written in place.

Per layer it holds what `HybridCache` holds, preallocated: the FA groups' keys and values
`[B, Hkv_fa, capacity, D]` in the model's dtype (a layer without FA groups holds none), the LA heads'
recurrent state `[B, H_la, D, D]` in float32 (float64 for a float64 model: the delta rule's compute dtype)
and, with a short conv, its state `[B, 3 H_la D, W - 1]` in the model's dtype. The cache also holds
`slot_valid` `[B, capacity]` (bool): False at the slots of pad tokens, which the single-token decode step
(`fast_decode.py`) masks in its FA heads. Every write is in place, so each tensor keeps its address: a
captured CUDA graph reads and writes them by address.

Eager forwards see what a dynamic cache would show them: the keys and values of the slots written so far
(`[:, :, :n]`, a view) and mask sizes of that length. So prefill keeps the causal / chunked path (no mask
over the whole capacity: at 128K that mask alone would take 16 GB) and eager results equal those of
`HybridCache`. A fresh cache holds zeros, which the delta rule and the conv read exactly as "no state".

`transformers` must not treat this cache as compileable (`is_compileable` is False): `generate()` would
then replace the 2-D padding mask by a 4-D one, which LA heads cannot read (they must know the pads), and
would try to `torch.compile` the forward. The decode step captures its own graph instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from hydrahead_lit.modeling.arch import decoder_layers

# The capacity is rounded up to a multiple of this, so the decode step can split the slots into equal blocks.
SLOT_MULTIPLE = 128


class InPlaceState(dict):
    """The LA state of one layer ('recurrent', 'conv'): assigning an entry copies into the preallocated tensor,
    so `GatedDeltaNetHeads` (which assigns the new state after each call) writes in place."""

    def __setitem__(self, key: str, value: Tensor | None) -> None:
        if key not in self:
            super().__setitem__(key, value)  # allocation, from StaticHybridLayer
            return
        held = self[key]
        if held is None or value is None:
            raise ValueError(f"this static cache layer holds no {key!r} state (the layer was built without it)")
        if value.shape != held.shape:
            raise ValueError(f"{key} state of shape {tuple(value.shape)} does not fit the static {tuple(held.shape)}")
        held.copy_(value)


class StaticHybridLayer(CacheLayerMixin):
    """One layer of `HybridStaticCache`; `num_tokens` counts the slots written (a host int)."""

    is_compileable = False  # see the module docstring
    is_croppable = False

    def __init__(
        self,
        batch_size: int,
        capacity: int,
        num_fa_kv: int,
        num_la_heads: int,
        head_dim: int,
        conv_width: int,
        dtype: torch.dtype,
        device: torch.device,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size, self.capacity, self.dtype, self.device = batch_size, capacity, dtype, device
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.num_tokens = 0
        shape = (batch_size, num_fa_kv, capacity, head_dim)
        if num_fa_kv:
            self.keys = torch.zeros(shape, dtype=dtype, device=device)
            self.values = torch.zeros(shape, dtype=dtype, device=device)
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        D = head_dim
        recurrent = None
        if num_la_heads:
            recurrent = torch.zeros(batch_size, num_la_heads, D, D, dtype=state_dtype, device=device)
        conv = None
        if num_la_heads and conv_width > 1:
            conv = torch.zeros(batch_size, 3 * num_la_heads * D, conv_width - 1, dtype=dtype, device=device)
        self.la_state = InPlaceState(recurrent=recurrent, conv=conv)
        self.is_initialized = True

    def tensors(self) -> list[Tensor]:
        """Every tensor this layer holds."""
        held = [t for t in (self.keys, self.values) if t is not None]
        return held + [t for t in self.la_state.values() if t is not None]

    def kv_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)

    def la_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.la_state.values() if t is not None)

    # --- the transformers layer interface -----------------------------------------------------------------------
    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Nothing to do: everything is allocated in `__init__`."""

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Write the new keys/values [B, Hkv_fa, T, D] at the next T slots; return the slots written so far."""
        if self.keys is None:
            raise ValueError("this layer has no FA group: it stores no keys or values")
        n, T = self.num_tokens, key_states.shape[-2]
        if key_states.shape[:2] != self.keys.shape[:2] or key_states.shape[-1] != self.keys.shape[-1]:
            raise ValueError(
                f"keys of shape {tuple(key_states.shape)} do not fit the static cache "
                f"[batch, FA KV groups, slots, head_dim] = {tuple(self.keys.shape)}"
            )
        self._check_room(T)
        self.keys[:, :, n : n + T].copy_(key_states)
        self.values[:, :, n : n + T].copy_(value_states)
        self.num_tokens = n + T
        return self.keys[:, :, : n + T], self.values[:, :, : n + T]

    def advance(self, n: int) -> None:
        """Count `n` tokens written outside `update` (a layer without FA group, or the decode step)."""
        self._check_room(n)
        self.num_tokens += n

    def _check_room(self, n: int) -> None:
        if self.num_tokens + n > self.capacity:
            raise ValueError(
                f"the static cache holds {self.capacity} tokens and {self.num_tokens} are written: {n} more do not "
                "fit; allocate it for the prompt plus every token to generate"
            )

    def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
        return self.num_tokens + query_length, 0

    def get_seq_length(self, *args: Any) -> int:
        return self.num_tokens

    def get_max_length(self) -> int:
        return self.capacity

    def get_max_cache_shape(self) -> int:  # the name older transformers releases call
        return self.capacity

    def reset(self) -> None:
        for t in self.tensors():
            t.zero_()
        self.num_tokens = 0

    def reorder_cache(self, beam_idx: Tensor) -> None:
        for t in self.tensors():
            t.copy_(t.index_select(0, beam_idx.to(t.device)))

    def crop(self, *args: Any) -> None:
        raise NotImplementedError("a static hybrid cache cannot be cropped (a recurrent LA state cannot be rewound)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ValueError("a static cache has a fixed batch size: allocate it for batch x beams / return sequences")

    def batch_select_indices(self, indices: Tensor) -> None:
        raise ValueError("a static cache has a fixed batch size and cannot drop rows")

    def offload(self) -> None:
        raise NotImplementedError("a static hybrid cache stays on its device")

    def prefetch(self) -> None:
        """Nothing to fetch: the cache never leaves its device."""


class HybridStaticCache(Cache):
    """Static generation cache for a HydraHead student: `HybridStaticCache(model, batch_size, max_length)`.

    `max_length` counts the prompt and every token to generate (pads included); the capacity is rounded up
    to a multiple of 128 slots. `nbytes()` is exact: the bytes of every tensor allocated here.
    """

    is_compileable = False

    def __init__(self, model: nn.Module, batch_size: int, max_length: int) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1 (got {batch_size}, {max_length})")
        spec = getattr(model.config, "hydrahead", None)
        if spec is None:
            raise ValueError(f"{type(model).__name__} is not a HydraHead student: use transformers' StaticCache")
        if spec["twins"]:
            raise ValueError("a stage-1 twin student decodes like its teacher; convert it with a head plan first")
        layers = decoder_layers(model)
        dtype, device = layers[0].self_attn.o_proj.weight.dtype, layers[0].self_attn.o_proj.weight.device
        capacity = -(-max_length // SLOT_MULTIPLE) * SLOT_MULTIPLE
        built = []
        for layer in layers:
            attn = layer.self_attn
            la = attn.la
            built.append(
                StaticHybridLayer(
                    batch_size, capacity, attn.num_fa_kv if attn.num_fa_heads else 0,
                    la.num_heads if la is not None else 0, attn.head_dim,
                    la.cfg.short_conv if la is not None else 0, dtype, device, attn.sliding_window,
                )
            )  # fmt: skip
        super().__init__(layers=built)
        self.capacity, self.dtype, self.device = capacity, dtype, device
        self.slot_valid = torch.ones(batch_size, capacity, dtype=torch.bool, device=device)
        self.decoder: Any = None  # a FastDecoder serving this cache's decode steps (set by fast_decode)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].num_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.capacity

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:  # the name older transformers releases call
        return self.capacity

    def record_tokens(self, attention_mask: Tensor | None, num_new: int) -> None:
        """Before a forward of `num_new` tokens: mark their slots real or pad from the 2-D `attention_mask`
        ([B, past + num_new], 1 at real tokens; None: all real)."""
        n = self.get_seq_length()
        if n + num_new > self.capacity:
            self.layers[0]._check_room(num_new)  # the error that says what to do
        cols = self.slot_valid[:, n : n + num_new]
        if attention_mask is None:
            cols.fill_(True)
        elif attention_mask.dim() == 2:
            cols.copy_(attention_mask[:, attention_mask.shape[-1] - num_new :].to(torch.bool))
        # a 4-D mask (all-FA students only): FA heads read it as it is; the decode step is not used with it

    @torch.no_grad()
    def load(self, dynamic: Any, rows: slice | None = None) -> None:
        """Copy a prefilled `HybridCache` (batch 1, or as many rows as `rows` selects) into `rows` of this
        fresh cache (all rows by default; every row then holds the same tokens). Its tokens count as real:
        load a prefill without pads. For a batch prefilled row by row, load every row the same number of
        tokens."""
        rows = slice(None) if rows is None else rows
        n = dynamic.get_seq_length()
        if any(layer.num_tokens not in (0, n) for layer in self.layers):
            raise ValueError(f"rows of a static cache must hold the same number of tokens; loading {n}")
        for src, dst in zip(dynamic.layers, self.layers, strict=True):
            if dst.keys is not None:
                dst.keys[rows, :, :n].copy_(src.keys)
                dst.values[rows, :, :n].copy_(src.values)
            for name, held in dst.la_state.items():
                if held is not None:
                    held[rows].copy_(src.la_state[name])
            dst.num_tokens = n
        self.slot_valid[rows, :n] = True

    def advance(self, n: int) -> None:
        """Count `n` tokens in every layer (the decode step writes them all at once)."""
        for layer in self.layers:
            layer.advance(n)

    def reset(self) -> None:
        super().reset()
        self.slot_valid.fill_(True)

    def tensors(self) -> list[Tensor]:
        return [t for layer in self.layers for t in layer.tensors()] + [self.slot_valid]

    def kv_nbytes(self) -> int:
        return sum(layer.kv_nbytes() for layer in self.layers)

    def la_nbytes(self) -> int:
        return sum(layer.la_nbytes() for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes allocated: FA keys/values, LA recurrent and conv states, and the slot mask."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def crop(self, *args: Any) -> None:
        raise NotImplementedError("a static hybrid cache cannot be cropped (a recurrent LA state cannot be rewound)")
