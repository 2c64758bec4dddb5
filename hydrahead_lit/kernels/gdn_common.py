"""Triton helpers shared by the chunked Gated DeltaNet kernels.

Notation used by every kernel (one chunk of ``BT`` steps, one head): ``G`` is the in-chunk
cumulative log decay (``G_i = g_1 + ... + g_i``), ``A`` the strictly lower matrix
``A_ij = beta_i exp(G_i - G_j) k_i.k_j`` and ``T = (I + A)^-1``; see ``gated_delta_rule.py``.
Rows past the sequence end load as zeros (``g = 0, beta = 0``), which leaves the state unchanged.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpret_mode() -> bool:
    """True under ``TRITON_INTERPRET=1`` (CPU tests): launch options such as ``num_warps`` are left out."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def load_rows(ptr, row0, T, stride_t, BT: tl.constexpr, D: tl.constexpr):
    """Load rows ``row0 .. row0+BT`` of a ``[T, D]`` view (row stride ``stride_t``) as float32."""
    return load_rows_raw(ptr, row0, T, stride_t, BT, D).to(tl.float32)


@triton.jit
def load_rows_raw(ptr, row0, T, stride_t, BT: tl.constexpr, D: tl.constexpr):
    """As :func:`load_rows`, in the stored dtype: a product of two stored tiles loses nothing by
    running on bf16 operands, and they take half the shared memory."""
    rows = row0 + tl.arange(0, BT)
    cols = tl.arange(0, D)
    return tl.load(ptr + rows[:, None] * stride_t + cols[None, :], mask=(rows < T)[:, None], other=0.0)


@triton.jit
def store_rows(ptr, x, row0, T, stride_t, BT: tl.constexpr, D: tl.constexpr):
    """Store a ``[BT, D]`` tile into rows ``row0 ..`` of a ``[T, D]`` view, dropping rows >= T."""
    rows = row0 + tl.arange(0, BT)
    cols = tl.arange(0, D)
    tl.store(
        ptr + rows[:, None] * stride_t + cols[None, :],
        x.to(ptr.dtype.element_ty),
        mask=(rows < T)[:, None],
    )


@triton.jit
def load_vec(ptr, row0, T, stride_t, BT: tl.constexpr):
    """Load ``BT`` scalars (one per step) as float32; rows >= T read 0."""
    rows = row0 + tl.arange(0, BT)
    return tl.load(ptr + rows * stride_t, mask=rows < T, other=0.0).to(tl.float32)


@triton.jit
def store_vec(ptr, x, row0, T, stride_t, BT: tl.constexpr):
    rows = row0 + tl.arange(0, BT)
    tl.store(ptr + rows * stride_t, x.to(ptr.dtype.element_ty), mask=rows < T)


@triton.jit
def chunk_cumsum(g, BT: tl.constexpr):
    """Inclusive prefix sum over the chunk."""
    return tl.cumsum(g, axis=0)


@triton.jit
def chunk_revcumsum(x, BT: tl.constexpr):
    """Suffix sum over the chunk: ``y_j = sum_{i >= j} x_i`` (the adjoint of :func:`chunk_cumsum`)."""
    i = tl.arange(0, BT)
    keep = i[:, None] >= i[None, :]
    return tl.sum(tl.where(keep, x[:, None], 0.0), axis=0)


@triton.jit
def decay_matrix(G, STRICT: tl.constexpr, BT: tl.constexpr):
    """``exp(G_i - G_j)`` on the lower triangle (strict or with diagonal), 0 above it.

    The exponent is masked before ``exp``: above the diagonal it is positive and could overflow.
    """
    i = tl.arange(0, BT)
    if STRICT:
        keep = i[:, None] > i[None, :]
    else:
        keep = i[:, None] >= i[None, :]
    return tl.where(keep, tl.exp(tl.where(keep, G[:, None] - G[None, :], 0.0)), 0.0)


@triton.jit
def unit_lower_inverse(A, BT: tl.constexpr):
    """``(I + A)^-1`` of a strictly lower ``[BT, BT]`` tile, by forward substitution in float32.

    Column ``j`` of the elimination subtracts ``A_ij X_j`` from every later row ``i`` once row ``j``
    is final. Each entry is a sum of products of ``A`` entries and earlier (final) entries of the
    inverse, so its rounding error stays at a few ulps of the terms (forward substitution is backward
    stable). The power series ``sum_n (-A)^n`` it replaces is exact in exact arithmetic but not in
    floating point: with correlated keys ``|A_ij|`` is near ``beta``, the partial sums grow like
    binomial coefficients (``C(63, 31) ~ 1e18`` for a 64-step chunk) and cancel catastrophically.
    """
    i = tl.arange(0, BT)
    rows = i[:, None]
    cols = i[None, :]
    X = tl.where(rows == cols, 1.0, 0.0)
    for j in range(BT - 1):
        x_j = tl.sum(tl.where(rows == j, X, 0.0), axis=0)  # row j, final from here on
        a_j = tl.sum(tl.where(cols == j, A, 0.0), axis=1)  # column j: zero on rows <= j
        X = X - a_j[:, None] * x_j[None, :]
    return X


@triton.jit
def mm_fp32(a, b):
    """A float32 product in full float32 (no TF32): the inverse's entries are built from such products."""
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def strict_lower_block(k_i, b_i, G_i, k_j, G_j):
    """Block ``(i, j)``, ``i > j``, of ``A``: ``beta_r exp(G_r - G_c) k_r.k_c`` for rows ``r`` of sub-chunk
    ``i`` and columns ``c`` of sub-chunk ``j`` (every row is later than every column: ``G_r - G_c <= 0``)."""
    return b_i[:, None] * tl.dot(k_i, tl.trans(k_j)) * tl.exp(G_i[:, None] - G_j[None, :])


@triton.jit
def diagonal_block_inverse(k_i, b_i, G_i, S: tl.constexpr):
    """``(I + A_ii)^-1`` of one ``[S, S]`` diagonal block of ``A`` by forward substitution."""
    return unit_lower_inverse(b_i[:, None] * tl.dot(k_i, tl.trans(k_i)) * decay_matrix(G_i, True, S), S)


@triton.jit
def wy_matrices(k, beta, G, BT: tl.constexpr):
    """Return ``(A, T)`` of the chunk: ``A`` strictly lower, ``T = (I + A)^-1`` (float32)."""
    A = beta[:, None] * tl.dot(k, tl.trans(k)) * decay_matrix(G, True, BT)
    return A, unit_lower_inverse(A, BT)


@triton.jit
def chunk_coords(i_t, i_bh, H, T, cu_seqlens, chunk_indices, IS_VARLEN: tl.constexpr):
    """Where the chunk of a chunk-parallel program lies: ``(b, h, bos, Tn, c)``.

    ``bos`` is the first step of its sequence within row ``b``, ``Tn`` the sequence's length and ``c``
    the chunk's index within it. Dense inputs: one sequence per batch row (grid ``(NT, B*H)``).
    Packed ones (``cu_seqlens``, B = 1): grid ``(total chunks, H)`` and ``chunk_indices`` holds
    ``(sequence, chunk)`` per program. In both, the chunk's start state is number
    ``(b*H + h)*NT + i_t`` of the stored states.
    """
    if IS_VARLEN:
        n = tl.load(chunk_indices + 2 * i_t).to(tl.int64)
        c = tl.load(chunk_indices + 2 * i_t + 1)
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        Tn = (tl.load(cu_seqlens + n + 1) - bos).to(tl.int32)
        b = i_bh * 0
        h = i_bh
    else:
        b = i_bh // H
        h = i_bh % H
        bos = i_bh * 0
        Tn = T
        c = i_t
    return b, h, bos, Tn, c


@triton.jit
def seq_coords(i_nh, H, T, NT, cu_seqlens, chunk_offsets, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The sequence of a state-recurrence program (grid ``(V blocks, N*H)``):
    ``(b, h, bos, Tn, NTn, chunk0)``, ``chunk0`` being its first chunk among the stored states."""
    b = i_nh // H
    h = i_nh % H
    if IS_VARLEN:
        b = i_nh * 0
        bos = tl.load(cu_seqlens + i_nh // H).to(tl.int64)
        Tn = (tl.load(cu_seqlens + i_nh // H + 1) - bos).to(tl.int32)
        NTn = tl.cdiv(Tn, BT)
        chunk0 = tl.load(chunk_offsets + i_nh // H).to(tl.int64)
    else:
        bos = i_nh * 0
        Tn = T
        NTn = NT
        chunk0 = i_nh * 0
    return b, h, bos, Tn, NTn, chunk0
