"""Forward kernels of the chunked Gated DeltaNet (three launches).

1. :func:`gdn_fwd_prep_kernel`, one program per (chunk, head), all chunks in parallel: the chunk's
   cumulative decay ``G``, ``T = (I + A)^-1`` (kept for the backward) and the two WY factors
   ``W = T diag(beta e^G) K`` and ``U0 = T diag(beta) V``. For the 64-step chunk ``T`` is built by
   blocks of 16 (:func:`wy_factors_by_blocks`).
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
    diagonal_block_inverse,
    load_rows,
    load_rows_raw,
    load_vec,
    mm_fp32,
    seq_coords,
    store_rows,
    store_vec,
    strict_lower_block,
    wy_matrices,
)

SUB = tl.constexpr(16)  # sub-chunk of the blocked inverse


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
    k_ptr, v_ptr = k + b * skb + bos * skt + h * skh, v + b * svb + bos * svt + h * svh
    g_ptr, b_ptr = g + b * sgb + bos * sgt + h * sgh, beta + b * sbb + bos * sbt + h * sbh
    gg = load_vec(g_ptr, row0, Tn, sgt, BT)
    G = chunk_cumsum(gg, BT)
    store_vec(Gc + buf, G, row0, Tn, 1, BT)
    if BT == 4 * SUB:
        wy_factors_by_blocks(
            k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, Tinv + buf * BT, W + buf * K, U + buf * V,
            row0, Tn, K, V, BT,
        )  # fmt: skip
    else:
        kk = load_rows_raw(k_ptr, row0, Tn, skt, BT, K)
        vv = load_rows_raw(v_ptr, row0, Tn, svt, BT, V)
        bb = load_vec(b_ptr, row0, Tn, sbt, BT)
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
def sub_chunk(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, i: tl.constexpr, row0, Tn, K: tl.constexpr,
              V: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """Rows ``16 i .. 16 i + 15`` of the chunk: ``k``, ``v`` (stored dtype), ``beta`` and ``G`` (float32).
    ``G`` continues the chunk's prefix sum ``gg`` (the whole chunk's ``g``, in registers) from the rows
    before this block. Summed in another order than the stored ``Gc`` that the other kernels read, it can
    differ from it by a few float32 ulps: far below the bf16 rounding of the factors it enters."""
    r0 = row0 + i * SUB
    before = tl.sum(tl.where(tl.arange(0, BT) < i * SUB, gg, 0.0), axis=0)
    G_i = before + chunk_cumsum(load_vec(g_ptr, r0, Tn, sgt, SUB), SUB)
    b_i = load_vec(b_ptr, r0, Tn, sbt, SUB)
    return load_rows_raw(k_ptr, r0, Tn, skt, SUB, K), load_rows_raw(v_ptr, r0, Tn, svt, SUB, V), b_i, G_i


@triton.jit
def wy_factors_by_blocks(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, Tinv, W, U, row0, Tn,
                         K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """``T = (I + A)^-1``, ``W`` and ``U0`` of one 64-step chunk from its four 16-step sub-chunks.

    Forward substitution over 64 rows is a chain of 63 dependent steps on a 64 x 64 tile; by blocks it is
    four independent 16 x 16 forward substitutions (the diagonal blocks ``X_ii = (I + A_ii)^-1``) and
    block forward substitution for the rest, ``X_ij = -X_ii sum_{j <= m < i} A_im X_mj``, in float32
    products. Each block is a sum of products of ``A`` blocks and final blocks of the inverse, as in
    the unblocked elimination, so the same stability argument holds (``unit_lower_inverse``). The
    products with ``T`` run on operands rounded to the input dtype, as in the unblocked path."""
    k0, v0, b0, G0 = sub_chunk(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, 0, row0, Tn, K, V, BT)
    k1, v1, b1, G1 = sub_chunk(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, 1, row0, Tn, K, V, BT)
    k2, v2, b2, G2 = sub_chunk(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, 2, row0, Tn, K, V, BT)
    k3, v3, b3, G3 = sub_chunk(k_ptr, v_ptr, g_ptr, b_ptr, skt, svt, sgt, sbt, gg, 3, row0, Tn, K, V, BT)
    X00 = diagonal_block_inverse(k0, b0, G0, SUB)
    X11 = diagonal_block_inverse(k1, b1, G1, SUB)
    X22 = diagonal_block_inverse(k2, b2, G2, SUB)
    X33 = diagonal_block_inverse(k3, b3, G3, SUB)
    A10 = strict_lower_block(k1, b1, G1, k0, G0)
    A20 = strict_lower_block(k2, b2, G2, k0, G0)
    A21 = strict_lower_block(k2, b2, G2, k1, G1)
    A30 = strict_lower_block(k3, b3, G3, k0, G0)
    A31 = strict_lower_block(k3, b3, G3, k1, G1)
    A32 = strict_lower_block(k3, b3, G3, k2, G2)
    X10 = -mm_fp32(X11, mm_fp32(A10, X00))
    X21 = -mm_fp32(X22, mm_fp32(A21, X11))
    X20 = -mm_fp32(X22, mm_fp32(A20, X00) + mm_fp32(A21, X10))
    X32 = -mm_fp32(X33, mm_fp32(A32, X22))
    X31 = -mm_fp32(X33, mm_fp32(A31, X11) + mm_fp32(A32, X21))
    X30 = -mm_fp32(X33, mm_fp32(A30, X00) + mm_fp32(A31, X10) + mm_fp32(A32, X20))
    dt = k0.dtype
    X00, X10, X11, X20, X21, X22 = X00.to(dt), X10.to(dt), X11.to(dt), X20.to(dt), X21.to(dt), X22.to(dt)
    X30, X31, X32, X33 = X30.to(dt), X31.to(dt), X32.to(dt), X33.to(dt)
    kb0, kb1 = (k0 * (b0 * tl.exp(G0))[:, None]).to(dt), (k1 * (b1 * tl.exp(G1))[:, None]).to(dt)
    kb2, kb3 = (k2 * (b2 * tl.exp(G2))[:, None]).to(dt), (k3 * (b3 * tl.exp(G3))[:, None]).to(dt)
    vb0, vb1 = (v0 * b0[:, None]).to(dt), (v1 * b1[:, None]).to(dt)
    vb2, vb3 = (v2 * b2[:, None]).to(dt), (v3 * b3[:, None]).to(dt)
    zero = tl.zeros([SUB, SUB], dtype=dt)  # the blocks of T above the diagonal
    store_sub_chunk_rows(
        Tinv, W, U, X00, zero, zero, zero, kb0, kb1, kb2, kb3, vb0, vb1, vb2, vb3, row0, Tn, 0, K, V, BT
    )
    store_sub_chunk_rows(
        Tinv, W, U, X10, X11, zero, zero, kb0, kb1, kb2, kb3, vb0, vb1, vb2, vb3, row0, Tn, 1, K, V, BT
    )
    store_sub_chunk_rows(Tinv, W, U, X20, X21, X22, zero, kb0, kb1, kb2, kb3, vb0, vb1, vb2, vb3, row0, Tn, 2, K, V, BT)
    store_sub_chunk_rows(Tinv, W, U, X30, X31, X32, X33, kb0, kb1, kb2, kb3, vb0, vb1, vb2, vb3, row0, Tn, 3, K, V, BT)


@triton.jit
def store_sub_chunk_rows(Tinv, W, U, X0, X1, X2, X3, kb0, kb1, kb2, kb3, vb0, vb1, vb2, vb3, row0, Tn,
                         i: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """Rows ``16 i ..`` of the chunk's ``T`` (its four ``[16, 16]`` blocks ``X_ij`` side by side, kept for the
    backward as one ``[64, 64]`` tile per chunk), of ``W = sum_{j <= i} X_ij diag(beta e^G)_j K_j`` (``kb_j``)
    and of ``U0 = sum_{j <= i} X_ij diag(beta)_j V_j`` (``vb_j``); the blocks right of the diagonal are zero."""
    n = Tn - i * SUB  # the rows of this sub-chunk inside the sequence
    base = Tinv + i * SUB * BT
    store_rows(base + 0 * SUB, X0, row0, n, BT, SUB, SUB)
    store_rows(base + 1 * SUB, X1, row0, n, BT, SUB, SUB)
    store_rows(base + 2 * SUB, X2, row0, n, BT, SUB, SUB)
    store_rows(base + 3 * SUB, X3, row0, n, BT, SUB, SUB)
    w, u = tl.dot(X0, kb0), tl.dot(X0, vb0)
    if i >= 1:
        w, u = w + tl.dot(X1, kb1), u + tl.dot(X1, vb1)
    if i >= 2:
        w, u = w + tl.dot(X2, kb2), u + tl.dot(X2, vb2)
    if i >= 3:
        w, u = w + tl.dot(X3, kb3), u + tl.dot(X3, vb3)
    store_rows(W + i * SUB * K, w, row0, n, K, SUB, K)
    store_rows(U + i * SUB * V, u, row0, n, V, SUB, V)


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
