"""Gated delta rule (Gated DeltaNet) in pure PyTorch: the recurrent definition and a chunked form.

Per KV head, with a state ``S`` of shape ``[K, V]``, decay ``a_t = exp(g_t)`` and write strength
``beta_t``::

    S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    o_t = scale * S_t^T q_t

This is the convention of flash-linear-attention's gated delta rule (Yang et al., "Gated Delta
Networks", 2024). Query heads are grouped as in GQA: query head ``h`` reads the state of KV head
``h // (Hq // Hkv)``. Both functions compute in float32 (float64 when ``v`` is float64: the
precision the kernels' tests compare against), return the output in ``v``'s dtype and the final
state in the compute dtype, and are differentiable by autograd (including w.r.t. ``initial_state``).
``q`` and ``k`` are used as given: callers L2-normalize them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chunk_gated_delta_rule_ref", "recurrent_gated_delta_rule"]


def _check_inputs(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None
) -> tuple[int, int, int, int, int, int]:
    """Validate shapes; return ``(B, T, Hq, Hkv, K, V)``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be [B, T, H, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, T, Hq, K = q.shape
    Hkv, V = k.shape[2], v.shape[3]
    if k.shape != (B, T, Hkv, K):
        raise ValueError(f"k must be [B, T, Hkv, K] = [{B}, {T}, Hkv, {K}] to match q; got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, Hkv):
        raise ValueError(f"v must be [B, T, Hkv, V] = [{B}, {T}, {Hkv}, V] to match k; got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, Hkv):
            raise ValueError(f"{name} must be [B, T, Hkv] = [{B}, {T}, {Hkv}]; got {tuple(x.shape)}")
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv}) for grouped queries")
    if T < 1:
        raise ValueError("the sequence length T must be at least 1")
    if initial_state is not None and initial_state.shape != (B, Hkv, K, V):
        raise ValueError(
            f"initial_state must be [B, Hkv, K, V] = [{B}, {Hkv}, {K}, {V}]; got {tuple(initial_state.shape)}"
        )
    return B, T, Hq, Hkv, K, V


def _compute_dtype(v: Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs."""
    return torch.float64 if v.dtype == torch.float64 else torch.float32


def _initial_state(initial_state: Tensor | None, B: int, H: int, K: int, V: int, device, dtype) -> Tensor:
    if initial_state is None:
        return torch.zeros(B, H, K, V, dtype=dtype, device=device)
    return initial_state.to(dtype)


def recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Step-by-step recurrence (the definition; also the decoding path, T may be 1).

    Args:
        q: ``[B, T, Hq, K]``; k: ``[B, T, Hkv, K]``; v: ``[B, T, Hkv, V]``.
        g: ``[B, T, Hkv]`` log decay (<= 0); beta: ``[B, T, Hkv]`` in (0, 1).
        scale: multiplies the output; defaults to ``K ** -0.5``.
        initial_state: ``[B, Hkv, K, V]`` (float32), zeros when omitted.
        output_final_state: also return the state after the last step.

    Returns:
        ``o`` of shape ``[B, T, Hq, V]`` in ``v``'s dtype and the final state ``[B, Hkv, K, V]``
        (float32) or None.
    """
    B, T, Hq, Hkv, K, V = _check_inputs(q, k, v, g, beta, initial_state)
    G = Hq // Hkv
    scale = K**-0.5 if scale is None else scale
    cd = _compute_dtype(v)
    qf = q.to(cd).reshape(B, T, Hkv, G, K) * scale
    kf, vf = k.to(cd), v.to(cd)
    decay, bf = g.to(cd).exp(), beta.to(cd)

    state = _initial_state(initial_state, B, Hkv, K, V, q.device, cd)
    outs = []
    for t in range(T):
        state = state * decay[:, t, :, None, None]
        # What the decayed state already predicts for k_t; only the error is written.
        pred = torch.einsum("bhk,bhkv->bhv", kf[:, t], state)
        delta = bf[:, t, :, None] * (vf[:, t] - pred)
        state = state + kf[:, t, :, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhgk,bhkv->bhgv", qf[:, t], state))
    o = torch.stack(outs, dim=1).reshape(B, T, Hq, V).to(v.dtype)
    return o, (state if output_final_state else None)


def chunk_gated_delta_rule_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunked (WY / UT-transform) form of :func:`recurrent_gated_delta_rule`: the training reference.

    Same arguments and results as the recurrence; ``T`` need not be a multiple of ``chunk_size``
    (the tail is zero-padded inside, which leaves the state unchanged). All intra-chunk work is
    batched over chunks; only the state is carried chunk to chunk in a Python loop.

    Within a chunk with cumulative log decay ``c_i = g_1 + ... + g_i`` and chunk-start state ``S0``,
    unrolling the recurrence gives the written values ``u_j = beta_j (v_j - a_j S_{j-1}^T k_j)`` as
    the solution of a unit lower-triangular system::

        (I + A) U = diag(beta) V - diag(beta * e^c) K S0,   A_jl = beta_j e^(c_j - c_l) k_j.k_l  (l < j)

    then ``O = scale * (diag(e^c) Q S0 + (M * Q K^T) U)`` with ``M_ij = e^(c_i - c_j)`` for ``j <= i``,
    and ``S_end = e^(c_C) S0 + (e^(c_C - c) * K)^T U``. Every exponent is <= 0, so nothing overflows.
    """
    B, T, Hq, Hkv, K, V = _check_inputs(q, k, v, g, beta, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    G = Hq // Hkv
    scale = K**-0.5 if scale is None else scale
    C = min(chunk_size, T)  # a short sequence is one chunk: no padding work
    N = math.ceil(T / C)
    pad = N * C - T

    # [B, H, T, D] in the compute dtype, zero-padded in time (k = 0, beta = 0, g = 0: padded steps
    # write nothing).
    cd = _compute_dtype(v)
    qf = F.pad(q.to(cd).transpose(1, 2), (0, 0, 0, pad))
    kf = F.pad(k.to(cd).transpose(1, 2), (0, 0, 0, pad))
    vf = F.pad(v.to(cd).transpose(1, 2), (0, 0, 0, pad))
    gf = F.pad(g.to(cd).transpose(1, 2), (0, pad))
    bf = F.pad(beta.to(cd).transpose(1, 2), (0, pad))

    qc = qf.reshape(B, Hkv, G, N, C, K).transpose(2, 3)  # [B, H, N, G, C, K]
    kc = kf.reshape(B, Hkv, N, C, K)
    vc = vf.reshape(B, Hkv, N, C, V)
    bc = bf.reshape(B, Hkv, N, C)
    cum = gf.reshape(B, Hkv, N, C).cumsum(-1)  # c_i

    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] >= idx[None, :]
    # M_ij = exp(c_i - c_j) on and below the diagonal; the upper part is masked before exp
    # (its exponent is positive and could overflow).
    diff = cum[..., :, None] - cum[..., None, :]
    decay = diff.masked_fill(~causal, float("-inf")).exp()  # [B, H, N, C, C]

    strictly_lower = idx[:, None] > idx[None, :]
    A = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~strictly_lower, 0.0)
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    rhs = torch.cat([vc * bc[..., None], kc * (bc * cum.exp())[..., None]], dim=-1)
    sol = torch.linalg.solve_triangular(A + eye, rhs, upper=False, unitriangular=True)
    u_base, w = sol.split([V, K], dim=-1)  # U = u_base - w @ S0

    scores = (qc @ kc.unsqueeze(3).transpose(-1, -2)) * decay.unsqueeze(3)  # [B, H, N, G, C, C]
    q_decayed = qc * cum.exp()[:, :, :, None, :, None]
    k_to_end = kc * (cum[..., -1:] - cum).exp()[..., None]  # decay from step j to the chunk end
    chunk_decay = cum[..., -1].exp()  # [B, H, N]

    state = _initial_state(initial_state, B, Hkv, K, V, q.device, cd)
    starts, writes = [], []
    for n in range(N):
        u = u_base[:, :, n] - w[:, :, n] @ state
        starts.append(state)
        writes.append(u)
        state = chunk_decay[:, :, n, None, None] * state + k_to_end[:, :, n].transpose(-1, -2) @ u
    s0 = torch.stack(starts, dim=2).unsqueeze(3)  # [B, H, N, 1, K, V]
    U = torch.stack(writes, dim=2).unsqueeze(3)  # [B, H, N, 1, C, V]
    o = scale * (q_decayed @ s0 + scores @ U)  # [B, H, N, G, C, V]
    o = o.transpose(2, 3).reshape(B, Hq, N * C, V)[:, :, :T].transpose(1, 2).to(v.dtype)
    return o, (state if output_final_state else None)
