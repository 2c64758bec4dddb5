"""Backward kernels of the chunked Gated DeltaNet (two launches).

Per chunk, with start state ``S0``, end state ``S1``, written values ``U = U0 - W S0`` and
``M_ij = exp(G_i - G_j)`` (``j <= i``), the forward is::

    O  = scale (diag(e^G) Q S0 + (M * QK^T) U)
    S1 = e^(G_last) S0 + (diag(e^(G_last - G)) K)^T U

1. :func:`gdn_bwd_state_kernel` runs the chunks in reverse, one program per (head, V block):
   ``dU = scale (M * QK^T)^T dO + diag(e^(G_last - G)) K dS1`` and
   ``dS0 = scale (diag(e^G) Q)^T dO + e^(G_last) dS1 - W^T dU``. It stores every chunk's ``dS1``
   and ``dU``; the last ``dS0`` is the initial state's gradient.
2. :func:`gdn_bwd_chunk_kernel`, all chunks in parallel: with ``dU`` and ``dS1`` known, the rest is
   local to the chunk (dq, dk, dv, dbeta and dg through the WY factors, where
   ``d(I + A)^-1 = -T^T dT T^T``; ``dg`` is the suffix sum of ``dG``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.gdn_common import (
    chunk_revcumsum,
    decay_matrix,
    load_rows,
    load_vec,
    store_rows,
    store_vec,
    wy_matrices,
)
from kernels.gdn_fwd import load_chunk_decay


@triton.jit
def gdn_bwd_state_kernel(
    q, k, W, Gc, do, dU, dhs, dht, dh0, T, NT, H, scale,
    sqb, sqt, sqh, skb, skt, skh, sdb, sdt, sdh,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    b, h = i_bh // H, i_bh % H
    ck = tl.arange(0, K)
    cv = i_v * BV + tl.arange(0, BV)
    state_off = ck[:, None] * V + cv[None, :]
    if HAS_DHT:
        dstate = tl.load(dht + i_bh * K * V + state_off).to(tl.float32)
    else:
        dstate = tl.zeros([K, BV], dtype=tl.float32)
    q_base = q + b * sqb + h * sqh
    k_base = k + b * skb + h * skh
    do_base = do + b * sdb + h * sdh + i_v * BV
    du_base = dU + i_bh * T * V + i_v * BV
    for i in range(NT):
        c = NT - 1 - i
        row0 = c * BT
        tl.store(dhs + (i_bh * NT + c) * K * V + state_off, dstate.to(dhs.dtype.element_ty))
        qq = load_rows(q_base, row0, T, sqt, BT, K)
        kk = load_rows(k_base, row0, T, skt, BT, K)
        dout = load_rows(do_base, row0, T, sdt, BT, BV)
        w = load_rows(W + i_bh * T * K, row0, T, K, BT, K)
        G, last = load_chunk_decay(Gc + i_bh * T, row0, T, BT)
        scores = tl.dot(qq, tl.trans(kk)) * decay_matrix(G, False, BT)
        du = scale * tl.dot(tl.trans(scores), dout) + tl.dot(kk * tl.exp(last - G)[:, None], dstate)
        store_rows(du_base, du, row0, T, V, BT, BV)
        dstate = (
            dstate * tl.exp(last) + scale * tl.dot(tl.trans(qq * tl.exp(G)[:, None]), dout) - tl.dot(tl.trans(w), du)
        )
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + state_off, dstate)


@triton.jit
def gdn_bwd_chunk_kernel(
    q, k, v, beta, Gc, U, hs, do, dU, dhs, dq, dk, dv, dbeta, dg, T, NT, H, scale,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sbb, sbt, sbh, sdb, sdt, sdh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, LOG2_BT: tl.constexpr,
):  # fmt: skip
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    b, h = i_bh // H, i_bh % H
    row0 = i_t * BT
    ck, cv, ci = tl.arange(0, K), tl.arange(0, V), tl.arange(0, BT)
    qq = load_rows(q + b * sqb + h * sqh, row0, T, sqt, BT, K)
    kk = load_rows(k + b * skb + h * skh, row0, T, skt, BT, K)
    vv = load_rows(v + b * svb + h * svh, row0, T, svt, BT, V)
    bb = load_vec(beta + b * sbb + h * sbh, row0, T, sbt, BT)
    dout = load_rows(do + b * sdb + h * sdh, row0, T, sdt, BT, V)
    u = load_rows(U + i_bh * T * V, row0, T, V, BT, V)
    du = load_rows(dU + i_bh * T * V, row0, T, V, BT, V)
    G, last = load_chunk_decay(Gc + i_bh * T, row0, T, BT)
    state_off = (i_bh * NT + i_t) * K * V + ck[:, None] * V + cv[None, :]
    s0 = tl.load(hs + state_off).to(tl.float32)
    ds1 = tl.load(dhs + state_off).to(tl.float32)
    eG = tl.exp(G)

    # Intra-chunk attention term scale * (M * QK^T) U and the start-state term scale * e^G Q S0.
    d_scores = scale * tl.dot(dout, tl.trans(u)) * decay_matrix(G, False, BT)
    dq_s0 = tl.dot(dout, tl.trans(s0))
    dqq = scale * eG[:, None] * dq_s0 + tl.dot(d_scores, kk)
    dkk = tl.dot(tl.trans(d_scores), qq)
    e = d_scores * tl.dot(qq, tl.trans(kk))
    dG = tl.sum(e, axis=1) - tl.sum(e, axis=0) + scale * eG * tl.sum(qq * dq_s0, axis=1)

    # End-state term (diag(e^(G_last - G)) K)^T U and e^(G_last) S0.
    k_decay = tl.exp(last - G)
    u_ds1 = tl.dot(u, tl.trans(ds1))
    dkk += k_decay[:, None] * u_ds1
    t = k_decay * tl.sum(kk * u_ds1, axis=1)
    dG -= t
    d_last = tl.sum(t, axis=0) + tl.exp(last) * tl.sum(tl.sum(ds1 * s0, axis=1), axis=0)
    dG += tl.where(ci == BT - 1, d_last, 0.0)

    # WY factors: U = T diag(beta) V - T diag(beta e^G) K S0.
    _, Tm = wy_matrices(kk, bb, G, BT, LOG2_BT)
    dw = -tl.dot(du, tl.trans(s0))
    dw_t = tl.dot(tl.trans(Tm), dw)
    du_t = tl.dot(tl.trans(Tm), du)
    bg = bb * eG
    tw = tl.sum(kk * dw_t, axis=1)
    dkk += bg[:, None] * dw_t
    dvv = bb[:, None] * du_t
    db = eG * tw + tl.sum(vv * du_t, axis=1)
    dG += bg * tw
    dT = tl.dot(dw, tl.trans(kk * bg[:, None])) + tl.dot(du, tl.trans(vv * bb[:, None]))
    dA = -tl.dot(tl.dot(tl.trans(Tm), dT), tl.trans(Tm), input_precision="tf32x3")
    m_strict = decay_matrix(G, True, BT)
    dA = dA * m_strict  # A is strictly lower: only those entries have a gradient
    d_kk = dA * bb[:, None]
    dkk += tl.dot(d_kk, kk) + tl.dot(tl.trans(d_kk), kk)
    kk_t = tl.dot(kk, tl.trans(kk))
    db += tl.sum(dA * kk_t, axis=1)
    a_da = d_kk * kk_t  # dA_ij * A_ij over the strict lower triangle
    dG += tl.sum(a_da, axis=1) - tl.sum(a_da, axis=0)

    # Gradients are contiguous [B, T, H, D] / [B, T, H].
    store_rows(dq + (b * T * H + h) * K, dqq, row0, T, H * K, BT, K)
    store_rows(dk + (b * T * H + h) * K, dkk, row0, T, H * K, BT, K)
    store_rows(dv + (b * T * H + h) * V, dvv, row0, T, H * V, BT, V)
    store_vec(dbeta + b * T * H + h, db, row0, T, H, BT)
    store_vec(dg + b * T * H + h, chunk_revcumsum(dG, BT), row0, T, H, BT)
