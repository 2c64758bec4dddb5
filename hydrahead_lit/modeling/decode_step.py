"""The pieces of a HydraHead layer's single-token decode step, as functions of tensors.

Each layer runs: the input RMSNorm and ONE fused input projection (FA q/k/v and LA q/k/v/decay/beta/gate
weights concatenated, `FusedLinear`) with the FA and LA inputs (q/k norms, RoPE, the LA conv step, L2 norms,
decay and beta: `attention_inputs`), the FA keys/values written into the static cache (`write_kv`), the FA
heads over it (`fa_heads`), the gated delta rule update (outside these functions: it may be a fla kernel),
then the fusion, o_proj, the residual and the post-attention norm (`attention_output`).
Nothing here synchronises with the host or branches on data, and every shape is static, so the step
can be captured in a CUDA graph. The functions take tensors and a hashable `LayerDims` only, so one
`torch.compile` of each serves every layer of the same shape.

They compute what the eager modules compute (attention.py, linear_heads.py, fusion.py, the families'
RMSNorm), checked against the eager path by tests/modeling/test_fast_decode.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.modeling.fused_inputs import fa_qk_rows, la_qk_rows, rms_norm, stats_dtype


class FusedLinear:
    """Several `nn.Linear` of the same input as one: weights (and biases, zeros where a layer has none)
    concatenated along the output dimension. The concatenation is a copy; `refresh()` rebuilds it in place
    (same storage, so a captured graph stays valid) when a source parameter was replaced or changed."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self.linears = list(linears)
        self.sizes = [lin.out_features for lin in self.linears]
        self.weight, self.bias = self._concat()
        self._stamp = self._current_stamp()

    @torch.no_grad()
    def _concat(self) -> tuple[Tensor, Tensor | None]:
        weight = torch.cat([lin.weight for lin in self.linears]).contiguous()
        if all(lin.bias is None for lin in self.linears):
            return weight, None
        parts = [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in self.linears]
        return weight, torch.cat(parts)

    def _current_stamp(self) -> tuple:
        return tuple(
            (id(p), p.data_ptr(), p._version) for lin in self.linears for p in (lin.weight, lin.bias) if p is not None
        )

    @torch.no_grad()
    def refresh(self) -> bool:
        """Copy the sources again if any changed since the last copy; True when it did."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        weight, bias = self._concat()
        if weight.shape != self.weight.shape or (bias is None) != (self.bias is None):
            raise ValueError("a fused projection's sources changed shape: build a new decoder")
        self.weight.copy_(weight)
        if bias is not None:
            self.bias.copy_(bias)
        self._stamp = stamp
        return True


@dataclass(frozen=True)
class LayerDims:
    """Static shape of one layer's step (hashable: compiled code is keyed by it)."""

    num_fa_heads: int
    num_fa_kv: int
    num_la_heads: int
    head_dim: int
    fa_scaling: float
    norm_eps: float  # the decoder layer's RMSNorms
    qk_norm_eps: float  # the attention's per-head q/k norms (when present)
    fusion_eps: float
    use_rope_la: bool
    output_gate: bool
    attention_block: int  # the FA slots are split into blocks of this many for P @ V

    @property
    def splits(self) -> list[int]:
        """Widths of the fused projection's pieces, in order: FA q|k, v; LA q|k|v, a, b[, gate]."""
        D, out = self.head_dim, []
        if self.num_fa_heads:  # q and k as one piece: they are normed and rotated together
            out += [(self.num_fa_heads + self.num_fa_kv) * D, self.num_fa_kv * D]
        if self.num_la_heads:
            out += [3 * self.num_la_heads * D, self.num_la_heads, self.num_la_heads]
            out += [self.num_la_heads * D] if self.output_gate else []
        return out


class LayerTensors(NamedTuple):
    """One layer's weights and static-cache tensors for the step (None where the layer has no such part)."""

    input_norm: Tensor
    proj_weight: Tensor
    proj_bias: Tensor | None
    fa_q_norm: Tensor | None
    fa_k_norm: Tensor | None
    keys: Tensor | None
    values: Tensor | None
    la_q_norm: Tensor | None
    la_k_norm: Tensor | None
    conv_weight: Tensor | None
    conv_state: Tensor | None
    A_log: Tensor | None
    dt_bias: Tensor | None
    fa_gain: Tensor | None
    la_gain: Tensor | None
    o_weight: Tensor
    o_bias: Tensor | None
    post_norm: Tensor


def attention_block(num_slots: int, max_blocks: int = 512) -> int:
    """Block size for splitting `num_slots` FA slots in P @ V: the smallest divisor of `num_slots` that is a
    multiple of 128 and leaves at most `max_blocks` blocks; all slots in one block up to 4096 slots."""
    if num_slots <= 4096 or num_slots % 128:
        return num_slots
    m = num_slots // 128
    d = next(d for d in range(1, m + 1) if m % d == 0 and m // d <= max_blocks)
    return 128 * d


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, visible: Tensor, scaling: float, block: int) -> Tensor:
    """Softmax attention of one query position over every slot of a static cache.

    q `[B, Hq, 1, D]`; keys / values `[B, Hkv, L, D]` (query head h reads KV head h // (Hq / Hkv)); visible
    `[B, L]` bool (False: masked). Returns `[B, 1, Hq, D]`. The query heads of a KV group become the rows of
    one matmul against their group's keys (no copy of the cache); the scores are scaled and softmaxed in
    float32 as in transformers' eager attention; P @ V is split into blocks of `block` slots, summed in
    float32, so the long reduction over slots spreads over many blocks.
    """
    B, Hq, _, D = q.shape
    Hkv, L = keys.shape[1], keys.shape[2]
    G = Hq // Hkv
    scores = torch.matmul(q.reshape(B, Hkv, G, D), keys.transpose(-1, -2)).float() * scaling  # [B, Hkv, G, L]
    scores = scores.masked_fill(~visible[:, None, None, :], torch.finfo(torch.float32).min)
    probs = scores.softmax(-1).to(values.dtype)
    nb = L // block
    if nb == 1:
        out = torch.matmul(probs, values)  # [B, Hkv, G, D]
    else:
        p = probs.view(B, Hkv, G, nb, block).transpose(2, 3)  # [B, Hkv, nb, G, block]
        out = torch.matmul(p, values.view(B, Hkv, nb, block, D)).float().sum(2).to(values.dtype)
    return out.reshape(B, 1, Hq, D)


def attention_inputs(
    h: Tensor, w: LayerTensors, d: LayerDims, cos: Tensor, sin: Tensor
) -> tuple[tuple[Tensor, Tensor, Tensor] | None, tuple[Tensor, ...] | None, Tensor | None]:
    """Everything of one layer before attention: the FA heads' q, k, v `[B, 1, H, D]` (normed, rotated), the
    LA rule inputs (q, k, v, g, beta; the conv state advanced in place) and the output gate's logits. The
    rows of q and k go through their norms, RoPE and L2 norm together (the same arithmetic per row as the
    modules', fewer kernels)."""
    B, D = h.shape[0], d.head_dim
    x = rms_norm(h, w.input_norm, d.norm_eps)
    pieces = list(F.linear(x, w.proj_weight, w.proj_bias).split(d.splits, dim=-1))
    fa = la = gate = None
    if d.num_fa_heads:
        nq = d.num_fa_heads
        qk, v = pieces[0].view(B, 1, -1, D), pieces[1].view(B, 1, -1, D)
        pieces = pieces[2:]
        qk = fa_qk_rows(qk, nq, w.fa_q_norm, w.fa_k_norm, d.qk_norm_eps, cos, sin)
        fa = (qk[:, :, :nq], qk[:, :, nq:], v)
    if d.num_la_heads:
        H = d.num_la_heads
        qkv, a, b = pieces[:3]
        gate = pieces[3] if d.output_gate else None
        if w.conv_weight is not None:  # one step of the causal depthwise conv, its window shifted in place
            window = torch.cat([w.conv_state, qkv.transpose(1, 2)], dim=-1)  # [B, C, W]
            w.conv_state.copy_(window[:, :, 1:])
            qkv = (window * w.conv_weight.to(qkv.dtype)).sum(-1)[:, None]
        qkv = qkv.view(B, 1, 3 * H, D)
        qk, v = qkv[:, :, : 2 * H], qkv[:, :, 2 * H :]
        qk = la_qk_rows(qk, w.la_q_norm, w.la_k_norm, cos if d.use_rope_la else None, sin if d.use_rope_la else None)
        acc = stats_dtype(a.dtype)
        g = -w.A_log.to(acc).exp() * F.softplus(a.to(acc) + w.dt_bias.to(acc))
        la = (qk[:, :, :H], qk[:, :, H:], v, g, torch.sigmoid(b.to(acc)))
    return fa, la, gate


def write_kv(w: LayerTensors, k: Tensor, v: Tensor, pos: Tensor) -> None:
    """Write the FA keys and values `[B, 1, Hkv, D]` at slot `pos` of the static cache (kept outside compiled
    code, so a compiler cannot turn the in-place write into a copy of the whole cache)."""
    slot = pos.view(1)
    w.keys.index_copy_(2, slot, k.transpose(1, 2))
    w.values.index_copy_(2, slot, v.transpose(1, 2))


def fa_heads(q: Tensor, w: LayerTensors, d: LayerDims, visible: Tensor) -> Tensor:
    """The FA heads' gained output `[B, 1, Hfa, D]` over every slot of the static cache."""
    out = decode_attention(q.transpose(1, 2), w.keys, w.values, visible, d.fa_scaling, d.attention_block)
    return out * w.fa_gain.to(out.dtype)[:, None]


def attention_output(
    h: Tensor, fa: Tensor | None, la: Tensor | None, gate: Tensor | None, w: LayerTensors, d: LayerDims
) -> tuple[Tensor, Tensor]:
    """The fusion, o_proj and residual: returns the residual stream and its post-attention norm (the MLP's input)."""
    B = h.shape[0]
    parts = [] if fa is None else [fa]
    if la is not None:
        if gate is not None:
            la = la * torch.sigmoid(gate).view(B, 1, d.num_la_heads, d.head_dim).to(la.dtype)
        dtype, o = la.dtype, la.float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + d.fusion_eps)
        parts.append((o * w.la_gain.float()).to(dtype))
    heads = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    h = h + F.linear(heads.reshape(B, 1, -1), w.o_weight, w.o_bias)
    return h, rms_norm(h, w.post_norm, d.norm_eps)
