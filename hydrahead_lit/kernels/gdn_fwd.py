"""Forward kernels of the chunked Gated DeltaNet (three launches).

1. :func:`gdn_fwd_prep_kernel`, one program per (chunk, head), all chunks in parallel: the chunk's
   cumulative decay ``G``, ``T = (I + A)^-1`` (kept for the backward) and the two WY factors
   ``W = T diag(beta e^G) K`` and ``U0 = T diag(beta) V``.
2. :func:`gdn_fwd_state_kernel`, one program per (head, block of V columns), a loop over chunks:
   the written values ``U = U0 - W S0`` and the chunk-start states ``S0``.
3. :func:`gdn_fwd_out_kernel`, one program per (chunk, head): ``O = scale (diag(e^G) Q S0 + (M * QK^T) U)``
   with an optional fused per-head RMS normalization and weight (the hybrid layer's fusion).

Inputs are strided ``[B, T, H, D]`` views (last dim contiguous), so slices of a larger head
dimension need no copy; scratch buffers are contiguous ``[B, H, T, D]``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gdn_common import (
    chunk_coords,
    chunk_cumsum,
    decay_matrix,
    load_rows,
    load_rows_raw,
    load_vec,
    seq_coords,
    store_rows,
    store_vec,
    wy_matrices,
)


@triton.jit
def load_chunk_decay(Gc, row0, T, BT: tl.constexpr):
    """Load ``G`` of one chunk; rows past the end repeat the last valid value (their ``g`` is 0)."""
    rows = row0 + tl.arange(0, BT)
    last = tl.load(Gc + tl.minimum(row0 + BT, T) - 1)
    G = tl.load(Gc + rows, mask=rows < T, other=0.0)
    return tl.where(rows < T, G, last), last


@triton.jit
def gdn_fwd_prep_kernel(
    k, v, g, beta, Gc, Tinv, W, U, cu_seqlens, chunk_indices, T, H,
    skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sbb, sbt, sbh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, c = chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    row0 = c * BT
    buf = (b * H + h) * T + bos  # first row of this sequence in the [B, H, T, ...] scratch buffers
    kk = load_rows_raw(k + b * skb + bos * skt + h * skh, row0, Tn, skt, BT, K)
    vv = load_rows_raw(v + b * svb + bos * svt + h * svh, row0, Tn, svt, BT, V)
    gg = load_vec(g + b * sgb + bos * sgt + h * sgh, row0, Tn, sgt, BT)
    bb = load_vec(beta + b * sbb + bos * sbt + h * sbh, row0, Tn, sbt, BT)
    G = chunk_cumsum(gg, BT)
    store_vec(Gc + buf, G, row0, Tn, 1, BT)
    _, Tm = wy_matrices(kk, bb, G, BT)
    # The factors are stored in the input dtype, so the products run on operands rounded to it.
    dt = kk.dtype
    Tm = Tm.to(dt)
    store_rows(Tinv + buf * BT, Tm, row0, Tn, BT, BT, BT)  # kept for the backward
    w = tl.dot(Tm, (kk * (bb * tl.exp(G))[:, None]).to(dt))
    u0 = tl.dot(Tm, (vv * bb[:, None]).to(dt))
    store_rows(W + buf * K, w, row0, Tn, K, BT, K)
    store_rows(U + buf * V, u0, row0, Tn, V, BT, V)


@triton.jit
def gdn_fwd_state_kernel(
    k, W, U, Gc, hs, h0, ht, cu_seqlens, chunk_offsets, T, NT, H,
    skb, skt, skh,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_v, i_nh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, NTn, chunk0 = seq_coords(i_nh, H, T, NT, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    ck = tl.arange(0, K)
    cv = i_v * BV + tl.arange(0, BV)
    state_off = ck[:, None] * V + cv[None, :]
    if HAS_H0:
        state = tl.load(h0 + i_nh * K * V + state_off).to(tl.float32)
    else:
        state = tl.zeros([K, BV], dtype=tl.float32)
    buf = (b * H + h) * T + bos
    k_base = k + b * skb + bos * skt + h * skh
    u_base = U + buf * V + i_v * BV
    hs_base = hs + ((b * H + h) * NT + chunk0) * K * V
    for c in range(NTn):
        row0 = c * BT
        tl.store(hs_base + c * K * V + state_off, state.to(hs.dtype.element_ty))
        # Products on operands in the input dtype; the state itself accumulates in float32.
        w = load_rows_raw(W + buf * K, row0, Tn, K, BT, K)
        dt = w.dtype
        u = load_rows(u_base, row0, Tn, V, BT, BV) - tl.dot(w, state.to(dt))
        store_rows(u_base, u, row0, Tn, V, BT, BV)
        G, last = load_chunk_decay(Gc + buf, row0, Tn, BT)
        # Decay folded into the narrow [BT, BV] tile rather than the [BT, K] one: fewer registers.
        kk = load_rows_raw(k_base, row0, Tn, skt, BT, K)
        state = state * tl.exp(last) + tl.dot(tl.trans(kk), (u * tl.exp(last - G)[:, None]).to(dt))
    if STORE_HT:
        tl.store(ht + i_nh * K * V + state_off, state)


@triton.jit
def gdn_fwd_out_kernel(
    q, k, U, Gc, hs, o, o_raw, rstd, weight, cu_seqlens, chunk_indices, T, NT, H, scale, eps,
    sqb, sqt, sqh, skb, skt, skh, sob, sot, soh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, FUSE_NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, c = chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    row0 = c * BT
    buf = (b * H + h) * T + bos
    qq = load_rows_raw(q + b * sqb + bos * sqt + h * sqh, row0, Tn, sqt, BT, K)
    kk = load_rows_raw(k + b * skb + bos * skt + h * skh, row0, Tn, skt, BT, K)
    u = load_rows_raw(U + buf * V, row0, Tn, V, BT, V)
    dt = u.dtype
    G, _ = load_chunk_decay(Gc + buf, row0, Tn, BT)
    ck, cv = tl.arange(0, K), tl.arange(0, V)
    s0 = tl.load(hs + ((b * H + h) * NT + i_t) * K * V + ck[:, None] * V + cv[None, :])
    scores = tl.dot(qq, tl.trans(kk)) * decay_matrix(G, False, BT)
    out = scale * (tl.dot((qq * tl.exp(G)[:, None]).to(dt), s0) + tl.dot(scores.to(dt), u))
    if FUSE_NORM:
        # The fusion of a hybrid layer: y = weight * o / rms(o), per step and head. The raw output
        # and 1/rms are kept for the backward.
        store_rows(o_raw + buf * V, out, row0, Tn, V, BT, V)
        r = 1.0 / tl.sqrt(tl.sum(out * out, axis=1) / V + eps)
        store_vec(rstd + buf, r, row0, Tn, 1, BT)
        wt = tl.load(weight + h * V + cv).to(tl.float32)
        out = out * r[:, None] * wt[None, :]
    store_rows(o + b * sob + bos * sot + h * soh, out, row0, Tn, sot, BT, V)
