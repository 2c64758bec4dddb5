"""The attention of one HydraHead layer: full-attention (FA) heads and Gated DeltaNet (LA) heads.

Heads are permuted at conversion so that the FA heads come first; the output ``[B, T, Hfa + Hla, D]``
goes straight to ``o_proj``. Per head, the fusion brings both kinds onto the teacher's scale::

    y_fa = fa_gain[h] * softmax_causal(q k^T * fa_scale) v            (GQA: Hfa % Hfa_kv == 0)
    y_la = la_weight[h] * o / sqrt(mean_d(o^2) + eps),  o = gated delta rule(q, k, v, g, beta)

:func:`hybrid_attention_ref` is the pure-PyTorch definition (any device); :func:`hybrid_attention`
dispatches to the project's fused Triton op (``hydrahead_lit/kernels/hybrid_attention.py``) on CUDA.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from hydrahead_lit.kernels.checks import check_hybrid_inputs
from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref

__all__ = ["check_hybrid_inputs", "hybrid_attention", "hybrid_attention_ref", "triton_available"]

logger = logging.getLogger("hydrahead_lit")


def hybrid_attention_ref(
    q_fa: Tensor,
    k_fa: Tensor,
    v_fa: Tensor,
    q_la: Tensor,
    k_la: Tensor,
    v_la: Tensor,
    g: Tensor,
    beta: Tensor,
    fa_gain: Tensor,
    la_weight: Tensor,
    eps: float = 1e-6,
    fa_scale: float | None = None,
    la_scale: float | None = None,
) -> Tensor:
    """The layer's attention in PyTorch (SDPA + the chunked gated delta rule reference).

    Shapes as in the module docstring; ``q_la``/``k_la`` arrive L2-normalized and rotated. Returns
    ``[B, T, Hfa + Hla, D]`` in ``q``'s dtype (the normalization runs in float32).
    """
    check_hybrid_inputs(q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight)
    Hfa, Hkv, Hla = q_fa.shape[2], k_fa.shape[2], q_la.shape[2]
    dtype = q_fa.dtype if Hfa else q_la.dtype
    parts = []
    if Hfa:
        attn = F.scaled_dot_product_attention(
            q_fa.transpose(1, 2), k_fa.transpose(1, 2), v_fa.transpose(1, 2),
            is_causal=True, scale=fa_scale, enable_gqa=Hkv != Hfa,
        ).transpose(1, 2)  # fmt: skip
        parts.append((attn.float() * fa_gain.float()[:, None]).to(dtype))
    if Hla:
        o, _ = chunk_gated_delta_rule_ref(q_la, k_la, v_la, g, beta, scale=la_scale)
        o = o.float()
        y = la_weight.float() * o * torch.rsqrt(o.square().mean(-1, keepdim=True) + eps)
        parts.append(y.to(dtype))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


@functools.cache
def triton_available() -> bool:
    """True when CUDA is present and the project's Triton kernels import."""
    if not torch.cuda.is_available():
        return False
    try:
        import hydrahead_lit.kernels.hybrid_attention  # noqa: F401
    except Exception as err:  # ImportError, or Triton failing to load its driver
        logger.warning("Triton hybrid attention unavailable (%s: %s)", type(err).__name__, err)
        return False
    return True


def hybrid_attention(
    q_fa: Tensor,
    k_fa: Tensor,
    v_fa: Tensor,
    q_la: Tensor,
    k_la: Tensor,
    v_la: Tensor,
    g: Tensor,
    beta: Tensor,
    fa_gain: Tensor,
    la_weight: Tensor,
    eps: float = 1e-6,
    fa_scale: float | None = None,
    la_scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """The layer's attention on the chosen backend: ``"auto"`` (Triton on CUDA when available, else
    the reference), ``"triton"`` or ``"torch"``. Arguments as in :func:`hybrid_attention_ref`."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown hybrid attention backend '{backend}'; use 'auto', 'triton' or 'torch'")
    args = (q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight)
    use_triton = backend == "triton" or (backend == "auto" and q_fa.is_cuda and triton_available())
    if not use_triton:
        return hybrid_attention_ref(*args, eps=eps, fa_scale=fa_scale, la_scale=la_scale)
    from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton

    return hybrid_attention_triton(*args, eps=eps, fa_scale=fa_scale, la_scale=la_scale)
