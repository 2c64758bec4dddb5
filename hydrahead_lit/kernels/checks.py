"""Shape checks of the kernels' entry points (plain PyTorch, no Triton: the dispatcher in
``hydrahead_lit.ops`` imports them without loading a compiler)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_gdn_inputs", "check_hybrid_inputs"]


def check_gdn_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> None:
    """Raise a ValueError naming what the Triton kernels cannot take."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "the Triton gated delta rule needs q, k [B, T, H, K] and v [B, T, H, V] with the same B, T, H "
            f"(one KV head per query head: expand KV heads first); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if g.shape != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(
            f"g and beta must be [B, T, H] = {tuple(q.shape[:3])}; got {tuple(g.shape)}, {tuple(beta.shape)}"
        )
    for name, d in (("K", q.shape[-1]), ("V", v.shape[-1])):
        if d < 16 or d & (d - 1):
            raise ValueError(f"head dim {name} must be a power of two >= 16 for the Triton kernels; got {d}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension; call .contiguous() first")


def check_hybrid_inputs(
    q_fa: Tensor, k_fa: Tensor, v_fa: Tensor, q_la: Tensor, k_la: Tensor, v_la: Tensor,
    g: Tensor, beta: Tensor, fa_gain: Tensor, la_weight: Tensor,
) -> None:  # fmt: skip
    """Raise a ValueError saying which argument has the wrong shape."""
    if q_fa.dim() != 4 or q_la.dim() != 4:
        raise ValueError(f"q_fa and q_la must be [B, T, H, D]; got {tuple(q_fa.shape)}, {tuple(q_la.shape)}")
    B, T, Hfa, D = q_fa.shape
    Hla = q_la.shape[2]
    if q_la.shape != (B, T, Hla, D):
        raise ValueError(f"q_la must be [B, T, Hla, D] with q_fa's B, T, D = {B, T, D}; got {tuple(q_la.shape)}")
    Hkv = k_fa.shape[2] if k_fa.dim() == 4 else -1
    if k_fa.shape != (B, T, Hkv, D) or v_fa.shape != k_fa.shape:
        raise ValueError(
            f"k_fa and v_fa must be [B, T, Hfa_kv, D] = [{B}, {T}, Hfa_kv, {D}]; got {tuple(k_fa.shape)}, "
            f"{tuple(v_fa.shape)}"
        )
    if (Hkv == 0) != (Hfa == 0) or (Hkv > 0 and Hfa % Hkv != 0):
        raise ValueError(f"FA query heads ({Hfa}) must be a multiple of FA KV heads ({Hkv}) (GQA)")
    for name, x in (("k_la", k_la), ("v_la", v_la)):
        if x.shape != q_la.shape:
            raise ValueError(f"{name} must be [B, T, Hla, D] = {tuple(q_la.shape)}; got {tuple(x.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, Hla):
            raise ValueError(f"{name} must be [B, T, Hla] = {(B, T, Hla)}; got {tuple(x.shape)}")
    if fa_gain.shape != (Hfa,):
        raise ValueError(f"fa_gain must be [Hfa] = [{Hfa}]; got {tuple(fa_gain.shape)}")
    if la_weight.shape != (Hla, D):
        raise ValueError(f"la_weight must be [Hla, D] = [{Hla}, {D}]; got {tuple(la_weight.shape)}")
    if Hfa + Hla == 0:
        raise ValueError("the layer has no heads (Hfa = Hla = 0)")
