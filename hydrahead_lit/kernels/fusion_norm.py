"""Backward of the LA heads' fusion ``y = w * o * r`` with ``r = (mean_d(o^2) + eps)^-1/2``, in Triton.

The forward is the epilogue of ``gdn_fwd_out_kernel``, which keeps ``o`` and ``r``. Here, per step and
head: ``do = r (w dy - o r^2 mean_d(w dy o))`` and the per-chunk partial sums of ``dw = dy o r``
(summed over chunks and batch by the caller). One pass over ``dy`` and ``o`` instead of the dozen
elementwise launches the same math takes in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gdn_common import interpret_mode, load_rows, load_vec, store_rows


@triton.jit
def fusion_norm_bwd_kernel(
    dy, o_raw, rstd, weight, do, dw_part, T, H, sdb, sdt, sdh,
    V: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h = i_bh // H, i_bh % H
    row0 = i_t * BT
    cv = tl.arange(0, V)
    g = load_rows(dy + b * sdb + h * sdh, row0, T, sdt, BT, V)
    o = load_rows(o_raw + i_bh * T * V, row0, T, V, BT, V)
    r = load_vec(rstd + i_bh * T, row0, T, 1, BT)
    w = tl.load(weight + h * V + cv).to(tl.float32)
    gw = g * w[None, :]
    mean = tl.sum(gw * o, axis=1) / V
    d_o = r[:, None] * (gw - o * (r * r * mean)[:, None])
    store_rows(do + i_bh * T * V, d_o, row0, T, V, BT, V)
    # dw_part is [NT, B*H, V]: one partial sum per chunk, reduced by the caller.
    tl.store(dw_part + (i_t * tl.num_programs(1) + i_bh) * V + cv, tl.sum(g * o * r[:, None], axis=0))


def fusion_norm_backward(
    dy: Tensor, o_raw: Tensor, rstd: Tensor, weight: Tensor, chunk: int = 64
) -> tuple[Tensor, Tensor]:
    """``dy`` strided ``[B, T, H, V]``, ``o_raw`` ``[B, H, T, V]``, ``rstd`` ``[B, H, T]``, ``weight``
    ``[H, V]``; returns ``(do [B, H, T, V] in o_raw's dtype, dweight [H, V] in weight's dtype)``."""
    B, H, T, V = o_raw.shape
    NT = triton.cdiv(T, chunk)
    do = torch.empty_like(o_raw)
    dw_part = torch.empty(NT, B, H, V, device=o_raw.device, dtype=torch.float32)
    fusion_norm_bwd_kernel[(NT, B * H)](
        dy, o_raw, rstd, weight, do, dw_part, T, H, dy.stride(0), dy.stride(1), dy.stride(2),
        V=V, BT=chunk, **({} if interpret_mode() else {"num_warps": 8}),
    )  # fmt: skip
    return do, dw_part.sum((0, 1)).to(weight.dtype)
