"""The input side of a HydraHead layer as functions of tensors: one projection for several linears of the
same input, and the q/k rows' norm, RoPE and L2 normalisation computed once for q and k together.

Shared by the training/prefill modules (attention.py, linear_heads.py); the single-token decode step can
call the same q/k functions (they take tensors only, so one `torch.compile` serves every layer shape).
Nothing here imports the modules that use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "apply_rope",
    "concat_linear",
    "fa_qk_rows",
    "la_qk_rows",
    "per_head_weight",
    "project_split",
    "rms_norm",
    "stats_dtype",
]

# F.normalize's default: a row whose norm is below it is divided by it instead (an all-zero row stays zero).
_L2_EPS = 1e-12


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for statistics and gates of bf16/fp16/fp32 tensors, float64 for float64 ones."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The RMSNorm of Llama, Qwen2, Qwen3 and Mistral over the last dimension, with the teacher's rounding:
    float32 statistics and product, rounded to x's dtype, then the weight (`[D]`, or `[H, D]` per head)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, T, H, D]; cos/sin [B, T, D] as the teacher's rotary embedding returns them."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + _rotate_half(x) * sin


# Output width of a fused projection is rounded up to this many columns. A width that is not a multiple of
# 8 (2 FA heads + 14 LA heads of 128 plus 14 decay and 14 beta logits: 5,916 at Qwen3-1.7B) sends cuBLAS
# to its 2-element-aligned GEMMs (`..._align2` in the 2026-12-02 profile of docs/benchmarks.md), for the
# forward and both backward GEMMs.
PROJECTION_ALIGN = 64


def concat_linear(x: Tensor, linears: Sequence[nn.Linear], align: int = 1) -> Tensor:
    """`torch.cat([lin(x) for lin in linears], -1)` as ONE `F.linear` over the weights concatenated along the
    output dimension (biases likewise, zeros where a linear has none; no bias at all when none has one).
    With `align` > 1 the output has zero columns appended up to a multiple of `align` (see
    `PROJECTION_ALIGN`); the caller drops them (`project_split`).

    The concatenation happens in every call, so autograd reaches the original parameters (state dicts,
    sharding and checkpoints keep their names and shapes), at the price of one copy of the weights per call,
    which the GEMM keeps for its backward (with activation checkpointing, only while a block recomputes). What
    it saves: one GEMM of the summed width instead of one per linear (some as narrow as one output per head),
    so one launch and far better occupancy, in the backward one input-gradient GEMM instead of one per linear
    plus the sum of their results."""
    width = sum(lin.out_features for lin in linears)
    pad = -width % align
    weights = [lin.weight for lin in linears]
    if pad:
        weights.append(linears[0].weight.new_zeros(pad, linears[0].in_features))
    weight = torch.cat(weights)
    if all(lin.bias is None for lin in linears):
        return F.linear(x, weight)
    parts, missing = [], 0  # consecutive linears without bias share one block of zeros
    for lin in linears:
        if lin.bias is None:
            missing += lin.out_features
            continue
        if missing:
            parts.append(lin.bias.new_zeros(missing))
            missing = 0
        parts.append(lin.bias)
    if missing + pad:
        parts.append(weight.new_zeros(missing + pad))
    return F.linear(x, weight, torch.cat(parts))


def project_split(x: Tensor, linears: Sequence[nn.Linear], splits: Sequence[int]) -> list[Tensor]:
    """The outputs of `linears` on `x` as views of one aligned projection (`concat_linear` with
    `PROJECTION_ALIGN`), split into pieces of the widths `splits` (which must add up to the linears' widths).
    The pieces' rows have the aligned stride, so GEMM and kernels read them at full vector width."""
    width = sum(lin.out_features for lin in linears)
    if sum(splits) != width:
        raise ValueError(f"splits {list(splits)} add up to {sum(splits)}, not the linears' {width} outputs")
    y = concat_linear(x, linears, align=PROJECTION_ALIGN)
    pad = y.shape[-1] - width
    pieces = y.split([*splits, pad] if pad else list(splits), dim=-1)
    return list(pieces[: len(splits)])


def per_head_weight(q_weight: Tensor, k_weight: Tensor, num_q: int, num_k: int) -> Tensor:
    """The q and k norms' weights `[D]` as one per-row weight `[num_q + num_k, D]` for q and k rows together."""
    return torch.cat([q_weight.expand(num_q, -1), k_weight.expand(num_k, -1)])


def fa_qk_rows(
    qk: Tensor,
    num_q: int,
    q_norm: Tensor | None,
    k_norm: Tensor | None,
    eps: float,
    cos: Tensor,
    sin: Tensor,
) -> Tensor:
    """FA queries and keys as the teacher makes them: `qk` `[B, T, Hq + Hk, D]` holds the query rows, then the
    key rows; each row is RMS-normed with its norm's weight (when the family has q/k norms) and rotated. The
    arithmetic per row is the teacher's; doing the rows of q and k in one tensor halves the launches."""
    if q_norm is not None:
        qk = rms_norm(qk, per_head_weight(q_norm, k_norm, num_q, qk.shape[2] - num_q), eps)
    return apply_rope(qk, cos, sin)


def la_qk_rows(
    qk: Tensor, q_norm: Tensor | None, k_norm: Tensor | None, cos: Tensor | None, sin: Tensor | None
) -> Tensor:
    """LA queries and keys: `qk` `[B, T, 2H, D]` (the H query rows, then the H key rows) through the per-head
    norm, RoPE (when `cos` is given) and the L2 normalisation, in `qk`'s dtype.

    This is L2(rope(q_norm(x))) with the norm's RMS statistic left out: a row's RMS factor is a positive
    scalar, which the L2 normalisation divides out exactly (RoPE is linear per row), so only the norm's
    per-channel weight changes the result (up to F.normalize's 1e-12 floor, which only an all-but-zero row
    reaches). Leaving it out skips the norm's float32 pass and one rounding to `qk`'s dtype.

    The L2 statistics are accumulated in float32 (float64 for float64 input), without a float32 copy of the
    rows: in bf16, squares summed at 8 significant bits would give norms off by a few parts in a thousand,
    and the delta rule is sensitive to ||k||: a write with strength beta leaves 1 - beta ||k||^2 of the value
    stored under k. The division runs in that precision too, so each component is rounded once, as before.
    """
    dtype = qk.dtype
    if q_norm is not None:
        H = qk.shape[2] // 2
        qk = qk * per_head_weight(q_norm, k_norm, H, H)
    if cos is not None:
        qk = apply_rope(qk, cos, sin)
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=stats_dtype(qk.dtype)).clamp_min(_L2_EPS)
    return (qk / norm).to(dtype)
