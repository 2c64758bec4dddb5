"""Backward kernels of the chunked Gated DeltaNet (four launches).

Per chunk, with start state ``S0``, end state ``S1``, written values ``U = U0 - W S0`` and
``M_ij = exp(G_i - G_j)`` (``j <= i``), the forward is::

    O  = scale (diag(e^G) Q S0 + (M * QK^T) U)
    S1 = e^(G_last) S0 + (diag(e^(G_last - G)) K)^T U

1. :func:`gdn_bwd_du_local_kernel` computes the in-chunk part of ``dU`` for all chunks at once; then
   :func:`gdn_bwd_state_kernel` runs the chunks in reverse, one program per (head, V block):
   ``dU = scale (M * QK^T)^T dO + diag(e^(G_last - G)) K dS1`` and
   ``dS0 = scale (diag(e^G) Q)^T dO + e^(G_last) dS1 - W^T dU``. It stores every chunk's ``dS1``
   and ``dU``; the last ``dS0`` is the initial state's gradient.
2. With ``dU`` and ``dS1`` known, the rest is local to each chunk, all chunks in parallel, split in
   two launches to fit shared memory: :func:`gdn_bwd_intra_kernel` (dq; the parts of dk and of the
   cumulative-decay gradient ``dG`` that come through O and S1) and :func:`gdn_bwd_wy_kernel` (the
   WY factors, where ``d(I + A)^-1 = -T^T dT T^T``: dv, dbeta, dk and ``dg``, the suffix sum of
   ``dG``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gdn_common import (
    chunk_coords,
    chunk_revcumsum,
    decay_matrix,
    load_rows,
    load_rows_raw,
    load_vec,
    seq_coords,
    store_rows,
    store_vec,
)
from .gdn_fwd import load_chunk_decay


@triton.jit
def gdn_bwd_du_local_kernel(
    q, k, Gc, do, dU, cu_seqlens, chunk_indices, T, H, scale,
    sqb, sqt, sqh, skb, skt, skh, sdb, sdt, sdh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    """The in-chunk part of dU, ``scale (M * QK^T)^T dO``: all chunks in parallel, ahead of the
    sequential kernel (which then only adds the part through the end state)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, c = chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    row0 = c * BT
    buf = (b * H + h) * T + bos  # first row of this sequence in the [B, H, T, ...] scratch buffers
    qq = load_rows_raw(q + b * sqb + bos * sqt + h * sqh, row0, Tn, sqt, BT, K)
    kk = load_rows_raw(k + b * skb + bos * skt + h * skh, row0, Tn, skt, BT, K)
    dout = load_rows_raw(do + b * sdb + bos * sdt + h * sdh, row0, Tn, sdt, BT, V)
    G, _ = load_chunk_decay(Gc + buf, row0, Tn, BT)
    scores = (tl.dot(qq, tl.trans(kk)) * decay_matrix(G, False, BT)) * scale
    du = tl.dot(tl.trans(scores.to(dout.dtype)), dout)
    store_rows(dU + buf * V, du, row0, Tn, V, BT, V)


@triton.jit
def gdn_bwd_state_kernel(
    q, k, W, Gc, do, dU, dhs, dht, dh0, cu_seqlens, chunk_offsets, T, NT, H, scale,
    sqb, sqt, sqh, skb, skt, skh, sdb, sdt, sdh,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_v, i_nh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, NTn, chunk0 = seq_coords(i_nh, H, T, NT, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    ck = tl.arange(0, K)
    cv = i_v * BV + tl.arange(0, BV)
    state_off = ck[:, None] * V + cv[None, :]
    if HAS_DHT:
        dstate = tl.load(dht + i_nh * K * V + state_off).to(tl.float32)
    else:
        dstate = tl.zeros([K, BV], dtype=tl.float32)
    buf = (b * H + h) * T + bos
    q_base = q + b * sqb + bos * sqt + h * sqh
    k_base = k + b * skb + bos * skt + h * skh
    do_base = do + b * sdb + bos * sdt + h * sdh + i_v * BV
    du_base = dU + buf * V + i_v * BV
    dhs_base = dhs + ((b * H + h) * NT + chunk0) * K * V
    for i in range(NTn):
        c = NTn - 1 - i
        row0 = c * BT
        tl.store(dhs_base + c * K * V + state_off, dstate.to(dhs.dtype.element_ty))
        qq = load_rows_raw(q_base, row0, Tn, sqt, BT, K)
        kk = load_rows_raw(k_base, row0, Tn, skt, BT, K)
        w = load_rows_raw(W + buf * K, row0, Tn, K, BT, K)
        dt = w.dtype
        dout = load_rows(do_base, row0, Tn, sdt, BT, BV)
        G, last = load_chunk_decay(Gc + buf, row0, Tn, BT)
        # Row scalings go on the narrow [BT, BV] tiles, products on operands in the input dtype.
        du = load_rows(du_base, row0, Tn, V, BT, BV) + tl.dot(kk, dstate.to(dt)) * tl.exp(last - G)[:, None]
        store_rows(du_base, du, row0, Tn, V, BT, BV)
        dout_g = (dout * (scale * tl.exp(G))[:, None]).to(dt)
        dstate = dstate * tl.exp(last) + tl.dot(tl.trans(qq), dout_g) - tl.dot(tl.trans(w), du.to(dt))
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + state_off, dstate)


@triton.jit
def gdn_bwd_intra_kernel(
    q, k, Gc, U, hs, do, dhs, dq, dk_part, dG_part, cu_seqlens, chunk_indices, T, NT, H, scale,
    sqb, sqt, sqh, skb, skt, skh, sdb, sdt, sdh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BVI: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    """dq (final), and the parts of dk and dG that come through O and the end state.

    Products run on operands in the input dtype (float32 accumulation).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, c = chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    row0 = c * BT
    buf = (b * H + h) * T + bos  # first row of this sequence in the [B, H, T, ...] scratch buffers
    ck, ci = tl.arange(0, K), tl.arange(0, BT)
    qq = load_rows_raw(q + b * sqb + bos * sqt + h * sqh, row0, Tn, sqt, BT, K)
    kk = load_rows_raw(k + b * skb + bos * skt + h * skh, row0, Tn, skt, BT, K)
    dt = kk.dtype
    G, last = load_chunk_decay(Gc + buf, row0, Tn, BT)
    eG = tl.exp(G)

    # Every product over V, accumulated over column blocks of V (smaller tiles, fewer registers):
    # dO S0^T, dO U^T (start-state and in-chunk terms of O) and U dS1^T, <dS1, S0> (end state).
    dq_s0 = tl.zeros([BT, K], dtype=tl.float32)
    do_u = tl.zeros([BT, BT], dtype=tl.float32)
    u_ds1 = tl.zeros([BT, K], dtype=tl.float32)
    s_dot = tl.zeros([K], dtype=tl.float32)
    for iv in range(V // BVI):
        cv = iv * BVI + tl.arange(0, BVI)
        state_off = ((b * H + h) * NT + i_t) * K * V + ck[:, None] * V + cv[None, :]
        dout = load_rows_raw(do + b * sdb + bos * sdt + h * sdh + iv * BVI, row0, Tn, sdt, BT, BVI)
        u = load_rows_raw(U + buf * V + iv * BVI, row0, Tn, V, BT, BVI)
        s0 = tl.load(hs + state_off)
        ds1 = tl.load(dhs + state_off)
        dq_s0 += tl.dot(dout, tl.trans(s0))
        do_u += tl.dot(dout, tl.trans(u))
        u_ds1 += tl.dot(u, tl.trans(ds1))
        s_dot += tl.sum(ds1.to(tl.float32) * s0.to(tl.float32), axis=1)

    # O = scale (e^G Q S0 + (M * QK^T) U): dq, and dk and dG through the scores.
    dG = scale * eG * tl.sum(qq.to(tl.float32) * dq_s0, axis=1)
    d_scores = scale * do_u * decay_matrix(G, False, BT)
    dqq = scale * eG[:, None] * dq_s0 + tl.dot(d_scores.to(dt), kk)
    store_rows(dq + ((b * T + bos) * H + h) * K, dqq, row0, Tn, H * K, BT, K)  # dq is contiguous [B, T, H, K]
    e = d_scores * tl.dot(qq, tl.trans(kk))
    dG += tl.sum(e, axis=1) - tl.sum(e, axis=0)
    dkk = tl.dot(tl.trans(d_scores.to(dt)), qq)

    # S1 = e^(G_last) S0 + (diag(e^(G_last - G)) K)^T U: dk and dG through the end state.
    u_ds1 = u_ds1 * tl.exp(last - G)[:, None]
    dkk += u_ds1
    t = tl.sum(kk.to(tl.float32) * u_ds1, axis=1)
    dG -= t
    # G_last is G at the chunk's last valid step: its gradient lands there (dG_part keeps valid rows).
    last_row = tl.minimum(BT, Tn - row0) - 1
    dG += tl.where(ci == last_row, tl.sum(t, axis=0) + tl.exp(last) * tl.sum(s_dot, axis=0), 0.0)
    store_rows(dk_part + buf * K, dkk, row0, Tn, K, BT, K)
    store_vec(dG_part + buf, dG, row0, Tn, 1, BT)


@triton.jit
def gdn_bwd_wy_kernel(
    k, v, beta, Gc, Tinv, hs, dU, dk_part, dG_part, dk, dv, dbeta, dg, cu_seqlens, chunk_indices, T, NT, H,
    skb, skt, skh, svb, svt, svh, sbb, sbt, sbh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BVI: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    """The WY factors U = T diag(beta) V - T diag(beta e^G) K S0: dv, dbeta, and dk, dg completed."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets for large B*H*T
    b, h, bos, Tn, c = chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    row0 = c * BT
    buf = (b * H + h) * T + bos  # first row of this sequence in the [B, H, T, ...] scratch buffers
    ck = tl.arange(0, K)
    kk = load_rows_raw(k + b * skb + bos * skt + h * skh, row0, Tn, skt, BT, K)
    dt = kk.dtype
    bb = load_vec(beta + b * sbb + bos * sbt + h * sbh, row0, Tn, sbt, BT)
    G, _ = load_chunk_decay(Gc + buf, row0, Tn, BT)
    eG = tl.exp(G)
    bg = bb * eG
    Tm = load_rows_raw(Tinv + buf * BT, row0, Tn, BT, BT, BT)  # as the forward used it

    # U0 = T diag(beta) V: dv, and the V part of dbeta and dT; dW = -dU S0^T. Over column blocks of V.
    db = tl.zeros([BT], dtype=tl.float32)
    dT = tl.zeros([BT, BT], dtype=tl.float32)
    dw = tl.zeros([BT, K], dtype=tl.float32)
    for iv in range(V // BVI):
        cv = iv * BVI + tl.arange(0, BVI)
        du = load_rows_raw(dU + buf * V + iv * BVI, row0, Tn, V, BT, BVI)
        vv = load_rows_raw(v + b * svb + bos * svt + h * svh + iv * BVI, row0, Tn, svt, BT, BVI)
        du_t = tl.dot(tl.trans(Tm), du)
        store_rows(dv + ((b * T + bos) * H + h) * V + iv * BVI, bb[:, None] * du_t, row0, Tn, H * V, BT, BVI)
        db += tl.sum(vv.to(tl.float32) * du_t, axis=1)
        dT += tl.dot(du, tl.trans((vv * bb[:, None]).to(dt)))
        dw -= tl.dot(du, tl.trans(tl.load(hs + ((b * H + h) * NT + i_t) * K * V + ck[:, None] * V + cv[None, :])))

    # W = T diag(beta e^G) K.
    dw = dw.to(dt)
    dw_t = tl.dot(tl.trans(Tm), dw)
    tw = tl.sum(kk.to(tl.float32) * dw_t, axis=1)
    dkk = load_rows(dk_part + buf * K, row0, Tn, K, BT, K) + bg[:, None] * dw_t
    db += eG * tw
    dG = load_vec(dG_part + buf, row0, Tn, 1, BT) + bg * tw
    dT += tl.dot(dw, tl.trans((kk * bg[:, None]).to(dt)))

    # T = (I + A)^-1 with A_ij = beta_i exp(G_i - G_j) k_i.k_j (i > j).
    Tf = Tm.to(tl.float32)
    dA = -tl.dot(tl.dot(tl.trans(Tf), dT), tl.trans(Tf))
    dA = dA * decay_matrix(G, True, BT)  # A is strictly lower: only those entries have a gradient
    d_kk = dA * bb[:, None]
    dkk += tl.dot(d_kk.to(dt), kk) + tl.dot(tl.trans(d_kk).to(dt), kk)
    kk_t = tl.dot(kk, tl.trans(kk))
    db += tl.sum(dA * kk_t, axis=1)
    a_da = d_kk * kk_t  # dA_ij * A_ij over the strict lower triangle
    dG += tl.sum(a_da, axis=1) - tl.sum(a_da, axis=0)

    # Gradients are contiguous [B, T, H, D] / [B, T, H].
    store_rows(dk + ((b * T + bos) * H + h) * K, dkk, row0, Tn, H * K, BT, K)
    store_vec(dbeta + (b * T + bos) * H + h, db, row0, Tn, H, BT)
    store_vec(dg + (b * T + bos) * H + h, chunk_revcumsum(dG, BT), row0, Tn, H, BT)
