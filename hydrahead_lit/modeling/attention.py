"""The HydraHead attention layer: FA heads first, Gated DeltaNet heads after, one shared o_proj.

Heads were permuted at conversion, so FA heads are a contiguous slice of the output and LA heads the
rest. The FA heads run the teacher's own attention function (SDPA, eager or flash-attn, whatever the
teacher's config names), so an all-FA student computes exactly the teacher's function.

*Twin mode* (stage 1): every head keeps the teacher's FA path, which alone produces the layer output (the
next layer sees the teacher's activations), and every head also has an LA twin computed from the same,
detached, layer input.

What a forward must record for stage 1 and head selection (both per-head outputs of twin layers, FA
attention rows) or change (activation patching) comes in an `AttentionProbe` passed with the forward
(`model(..., attention_probe=probe)`); the records go into the probe, and the module keeps no state
between calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hydrahead_lit.modeling.fused_inputs import fa_qk_rows, project_split
from hydrahead_lit.modeling.fusion import ScaleNormFusion
from hydrahead_lit.modeling.linear_heads import GatedDeltaNetHeads, HeadRMSNorm, LAConfig
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.ops.hybrid_attention import hybrid_attention
from hydrahead_lit.ops.hybrid_attention import triton_available as hybrid_triton_available


def _attention_function(config: Any) -> Callable:
    """The teacher family's attention function for `config._attn_implementation`."""
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl == "eager":
        module = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
        return module.eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[impl]


class HybridAttention(nn.Module):
    """Drop-in replacement for a teacher attention module (same call signature, same return)."""

    def __init__(
        self,
        config: Any,
        layer_idx: int,
        num_fa_heads: int,
        num_la_heads: int,
        la_cfg: LAConfig,
        twins: bool = False,
        arch: dict | None = None,
    ) -> None:
        super().__init__()
        hidden = config.hidden_size
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or hidden // n_heads
        self.num_key_value_groups = n_heads // n_kv  # query heads per KV group, read by HF attention functions
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.is_causal = True
        layer_types = getattr(config, "layer_types", None)
        sliding = layer_types is not None and layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = getattr(config, "sliding_window", None) if sliding else None
        self.twins = twins
        self.num_fa_heads, self.num_la_heads = num_fa_heads, num_la_heads
        if twins and num_la_heads != num_fa_heads:
            raise ValueError("twin mode gives every FA head an LA twin: num_la_heads must equal num_fa_heads")
        if not twins and num_fa_heads + num_la_heads != n_heads:
            raise ValueError(f"layer {layer_idx}: {num_fa_heads} FA + {num_la_heads} LA heads != {n_heads} heads")
        if num_fa_heads % self.num_key_value_groups:
            raise ValueError("FA heads must be whole KV groups")
        arch = arch or {}
        bias = bool(arch.get("qkv_bias", getattr(config, "attention_bias", False)))
        o_bias = bool(arch.get("o_bias", getattr(config, "attention_bias", False)))
        has_qk_norm = bool(arch.get("qk_norm", config.model_type == "qwen3"))
        eps = getattr(config, "rms_norm_eps", 1e-6)
        D = self.head_dim
        n_fa_kv = num_fa_heads // self.num_key_value_groups
        self.num_fa_kv = n_fa_kv
        self.q_proj = nn.Linear(hidden, num_fa_heads * D, bias=bias) if num_fa_heads else None
        self.k_proj = nn.Linear(hidden, n_fa_kv * D, bias=bias) if num_fa_heads else None
        self.v_proj = nn.Linear(hidden, n_fa_kv * D, bias=bias) if num_fa_heads else None
        self.q_norm = self.k_norm = None
        if has_qk_norm and num_fa_heads:
            self.q_norm, self.k_norm = HeadRMSNorm(D, eps), HeadRMSNorm(D, eps)
        self.la = (
            GatedDeltaNetHeads(hidden, num_la_heads, D, la_cfg, bias=bias, qk_norm_eps=eps if has_qk_norm else None)
            if num_la_heads
            else None
        )
        self.fusion = ScaleNormFusion(0 if twins else num_fa_heads, num_la_heads, D)
        self.o_proj = nn.Linear(n_heads * D, hidden, bias=o_bias)

    def _attention_rows(self, q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        """Softmax attention rows [B, Hfa, R, T] of the FA heads at query positions `rows` (explicit math:
        SDPA hides the weights)."""
        rows = rows.to(q.device)
        k = k.repeat_interleave(self.num_key_value_groups, dim=1)
        scores = torch.einsum("bhrd,bhtd->bhrt", q[:, :, rows].float(), k.float()) * self.scaling
        offset = k.shape[2] - q.shape[2]
        causal = torch.arange(k.shape[2], device=q.device)[None, :] > (rows[:, None] + offset)
        return scores.masked_fill(causal, float("-inf")).softmax(-1)

    def _fa_splits(self) -> list[int]:
        """Widths of the FA pieces of the input projection: q|k (normed and rotated as one tensor), v."""
        D = self.head_dim
        return [(self.num_fa_heads + self.num_fa_kv) * D, self.num_fa_kv * D]

    @property
    def input_linears(self) -> list[nn.Linear]:
        """Every projection of the layer input, in the fused projection's order: FA q, k, v, then the LA heads'."""
        fa = [self.q_proj, self.k_proj, self.v_proj] if self.num_fa_heads else []
        return fa + (self.la.input_linears if self.la is not None else [])

    def _project(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The layer's whole input projection as ONE GEMM: FA q/k/v and the LA heads' q/k/v, decay, beta
        (and output gate) weights concatenated (`project_split`), split once into views. Returns the FA pieces
        (q|k, v; none without FA heads) and the LA pieces (`GatedDeltaNetHeads.input_splits`; none without LA
        heads). Instead of 6 to 9 GEMMs (decay and beta only one output per head wide): one launch, one wide GEMM, and
        in the backward one input-gradient GEMM instead of 6 to 9 and their sum."""
        splits = self._fa_splits() if self.num_fa_heads else []
        if self.la is not None:
            splits += self.la.input_splits()
        pieces = project_split(x, self.input_linears, splits)
        n_fa = 2 if self.num_fa_heads else 0
        return pieces[:n_fa], pieces[n_fa:]

    def _fa_pieces(self, x: Tensor) -> list[Tensor]:
        """The FA pieces alone (twin mode, where the LA twins project a detached input of their own)."""
        return project_split(x, [self.q_proj, self.k_proj, self.v_proj], self._fa_splits())

    def _fa_qkv(self, pieces: list[Tensor], cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """FA queries, keys (normed as the teacher does, rotated) and values, [B, T, heads, D], each dense."""
        qk, v = pieces
        B, T, _ = qk.shape
        D = self.head_dim
        qk = fa_qk_rows(
            qk.view(B, T, -1, D),
            self.num_fa_heads,
            self.q_norm.weight if self.q_norm is not None else None,
            self.k_norm.weight if self.k_norm is not None else None,
            self.q_norm.eps if self.q_norm is not None else 0.0,
            cos,
            sin,
        )
        q, k = qk.split([self.num_fa_heads, self.num_fa_kv], dim=2)
        # Dense copies: cuDNN SDPA (torch 2.11, H200, bf16, causal, GQA) gave wrong gradients for these strided
        # views (relative error 0.66 over a tiny student's parameters; tests/modeling/test_gpu_step.py).
        return q.contiguous(), k.contiguous(), v.view(B, T, -1, D).contiguous()

    def _fa_forward(
        self,
        pieces: list[Tensor],
        cos: Tensor,
        sin: Tensor,
        attention_mask: Tensor | None,
        cache_layer: Any,
        probe: AttentionProbe | None,
        **kwargs: Any,
    ) -> Tensor:
        q, k, v = self._fa_qkv(pieces, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache_layer is not None:
            k, v = cache_layer.update(k, v)
        if probe is not None and probe.rows is not None:
            probe.record_attention(self.layer_idx, self._attention_rows(q, k, probe.rows))
        kwargs.pop("output_attentions", None)
        out, _ = _attention_function(self.config)(  # looked up per call: set_attn_implementation may change it
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        return out  # [B, T, Hfa, D]

    def _fused_path_applies(
        self,
        x: Tensor,
        attention_mask: Tensor | None,
        cache_layer: Any,
        token_valid: Tensor | None,
        probe: AttentionProbe | None,
    ) -> bool:
        """The fused Triton op covers causal training/prefill without cache, padding, sliding window,
        output gate, and with SDPA as the FA function; everything else takes the composed path (which
        skips pads in the LA heads)."""
        no_padding = attention_mask is None and token_valid is None
        if not (x.is_cuda and self.num_la_heads and cache_layer is None and no_padding):
            return False
        if self.sliding_window is not None or self.la.g_proj is not None:
            return False
        if probe is not None and probe.rows is not None:  # attention rows are read from the composed FA path
            return False
        if self.la.cfg.backend not in ("auto", "triton") or getattr(self.config, "_attn_implementation", "") != "sdpa":
            return False
        return hybrid_triton_available()

    def _fused_forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        D = self.head_dim
        fa_pieces, la_pieces = self._project(x)
        if self.num_fa_heads:
            q_fa, k_fa, v_fa = self._fa_qkv(fa_pieces, cos, sin)
            fa_gain = self.fusion.fa_gain
        else:
            q_fa = k_fa = v_fa = x.new_empty(B, T, 0, D)
            fa_gain = x.new_empty(0)
        q, k, v, g, beta, _ = self.la.prepare(la_pieces, cos, sin)  # no output gate on this path
        return hybrid_attention(
            q_fa, k_fa, v_fa, q, k, v, g, beta, fa_gain, self.fusion.la_gain,
            eps=self.fusion.eps, fa_scale=self.scaling, backend="triton" if x.is_cuda else "torch",
        )  # fmt: skip

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: Any = None,
        cache: Any = None,
        token_valid: Tensor | None = None,
        attention_probe: AttentionProbe | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        """`token_valid` [B, T] (bool) marks the real tokens of this call; the student's model derives it
        from the 2-D `attention_mask` (see `student.token_validity`), None when there is no pad. FA heads
        mask pads through `attention_mask`; LA heads skip them (their state is untouched by a pad).
        `attention_probe` carries what this forward must record or patch (see `AttentionProbe`)."""
        cache = cache if cache is not None else past_key_values  # transformers renamed the argument in 5.x
        kwargs.pop("position_ids", None)
        kwargs.pop("use_cache", None)
        kwargs.pop("cache_position", None)
        B, T, _ = hidden_states.shape
        if token_valid is not None and token_valid.shape != (B, T):
            raise ValueError(f"token_valid must be [B, T] = [{B}, {T}], got {tuple(token_valid.shape)}")
        cos, sin = position_embeddings
        cache_layer = cache.layers[self.layer_idx] if cache is not None else None
        if cache_layer is not None and not hasattr(cache_layer, "la_state"):
            raise TypeError(
                f"a HydraHead student needs a HybridCache, got {type(cache).__name__}: use model.new_cache()"
            )
        probe = attention_probe
        if self.twins:
            if cache_layer is not None:
                raise ValueError("twin (stage-1) attention does not decode with a cache")
            return self._twin_forward(hidden_states, cos, sin, attention_mask, token_valid, probe, **kwargs), None
        if probe is not None and probe.patches(self.layer_idx):
            raise ValueError(
                f"layer {self.layer_idx} has no LA twins to patch in: activation patching needs the stage-1 twin "
                "model (hh.convert(teacher, None, twins=True))"
            )
        if self._fused_path_applies(hidden_states, attention_mask, cache_layer, token_valid, probe):
            return self.o_proj(self._fused_forward(hidden_states, cos, sin).reshape(B, T, -1)), None
        parts = []
        fa_pieces, la_pieces = self._project(hidden_states)
        if self.num_fa_heads:
            fa = self._fa_forward(fa_pieces, cos, sin, attention_mask, cache_layer, probe, **kwargs)
            parts.append(self.fusion.fa(fa))
        elif cache_layer is not None:
            cache_layer.advance(T)
        if self.num_la_heads:
            state = cache_layer.la_state if cache_layer is not None else None
            la = self.la(hidden_states, cos, sin, state, valid=token_valid, pieces=la_pieces)
            parts.append(self.fusion.la(la))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return self.o_proj(out.reshape(B, T, -1)), None

    def _twin_forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        attention_mask: Tensor | None,
        token_valid: Tensor | None,
        probe: AttentionProbe | None,
        **kwargs: Any,
    ) -> Tensor:
        """The teacher's layer output; the LA twins run (on the detached input) only when the probe asks for
        the alignment pair or patches this layer. Whether they run depends on the probe's requests alone, so
        a recompute under activation checkpointing repeats exactly the forward's operations."""
        B, T, _ = x.shape
        fa = self._fa_forward(self._fa_pieces(x), cos, sin, attention_mask, None, probe, **kwargs)
        if probe is None or not probe.needs_twins(self.layer_idx):
            return self.o_proj(fa.reshape(B, T, -1))
        # The twins' own projection (one GEMM of their q/k/v/decay/beta/gate): their input is detached.
        la = self.fusion.la(self.la(x.detach(), cos, sin, valid=token_valid))
        if probe.alignment:
            probe.record_alignment(self.layer_idx, fa.detach(), la)
        blocks = probe.patched_blocks(self.layer_idx)
        if blocks:  # activation patching: in each block of rows, its heads' FA outputs become their LA twins'
            if B % len(blocks):
                raise ValueError(f"a batch of {B} rows does not split into {len(blocks)} patch blocks")
            fa, n = fa.clone(), B // len(blocks)
            for k, heads in enumerate(blocks):
                rows = slice(k * n, (k + 1) * n)
                fa[rows, :, heads] = la[rows, :, heads].to(fa.dtype)
        return self.o_proj(fa.reshape(B, T, -1))
