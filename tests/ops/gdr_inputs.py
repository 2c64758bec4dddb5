"""Random, well-conditioned inputs for gated delta rule tests (shared by the ops and kernel tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def make_gdr_inputs(
    B: int = 2,
    T: int = 37,
    Hq: int = 2,
    Hkv: int = 2,
    K: int = 8,
    V: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    with_state: bool = True,
    requires_grad: bool = False,
) -> dict[str, Tensor | None]:
    """q, k L2-normalized (as the model passes them); g = log decay in about (-1.4, -0.01); beta in
    (0.05, 0.95); a unit-scale float32 initial state. Keyword names match the ops' arguments."""
    q = F.normalize(torch.randn(B, T, Hq, K, device=device), dim=-1)
    k = F.normalize(torch.randn(B, T, Hkv, K, device=device), dim=-1)
    v = torch.randn(B, T, Hkv, V, device=device)
    g = F.logsigmoid(torch.randn(B, T, Hkv, device=device) + 2.0)
    beta = torch.rand(B, T, Hkv, device=device) * 0.9 + 0.05
    out: dict[str, Tensor | None] = {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": v.to(dtype),
        "g": g.to(dtype),
        "beta": beta.to(dtype),
        "initial_state": torch.randn(B, Hkv, K, V, device=device) if with_state else None,
    }
    if requires_grad:
        for x in out.values():
            if x is not None:
                x.requires_grad_(True)
    return out


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, in float32."""
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------------------------------
# Stressed inputs: what real models feed the linear heads, and what broke a kernel once.
#
# Keys after a model's k_norm, RoPE and L2 norm are far from isotropic, and repeated tokens give
# identical keys. Within a chunk the delta rule's (I + A) then has |A_ij| near beta, where a
# power-series inverse cancels catastrophically. Every LA backend is tested on all of these.

STRESS_CASES = (
    "random",  # near-orthogonal keys (the easy case)
    "correlated_0.5",  # k = normalize(m * shared + (1 - m) * noise), m = 0.5
    "correlated_0.95",
    "identical_keys",  # every step of a head writes along the same key
    "repeated_tokens",  # a 5-token pattern repeated: identical keys and values recur
    "weak_decay",  # g in (-1e-4, 0], with correlated keys (m = 0.8): no forgetting
    "zero_decay",  # g = 0 exactly
    "strong_decay",  # g down to -8: exp(G) underflows within a chunk
    "beta_extremes",  # beta in {0, 1e-4, 1 - 1e-4, 1}: rows that write nothing and rows that overwrite
    "projection",  # identical keys, beta = 1, g = 0: each step replaces the state's value along k
)


def make_stressed_inputs(
    case: str,
    B: int = 2,
    T: int = 45,
    Hq: int = 2,
    Hkv: int = 2,
    K: int = 16,
    V: int = 16,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    with_state: bool = False,
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, Tensor | None]:
    """Inputs of one :data:`STRESS_CASES` case, drawn in float64 and cast to ``dtype`` (keyword names
    match the ops' arguments; q and k are unit vectors as the model passes them)."""
    if case not in STRESS_CASES:
        raise ValueError(f"unknown stress case {case!r}; choose one of {STRESS_CASES}")
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def mixed(m: float) -> Tensor:
        return F.normalize(m * randn(B, 1, Hkv, K) + (1 - m) * randn(B, T, Hkv, K), dim=-1)

    q = F.normalize(randn(B, T, Hq, K), dim=-1)
    k = F.normalize(randn(B, T, Hkv, K), dim=-1)
    v = randn(B, T, Hkv, V)
    g = F.logsigmoid(randn(B, T, Hkv) + 2.0)
    beta = rand(B, T, Hkv) * 0.9 + 0.05
    if case.startswith("correlated_"):
        k = mixed(float(case.split("_")[1]))
    elif case in ("identical_keys", "projection"):
        k = mixed(1.0).expand(B, T, Hkv, K).contiguous()
        if case == "projection":
            beta, g = torch.ones_like(beta), torch.zeros_like(g)
    elif case == "repeated_tokens":
        idx = torch.arange(T) % 5
        k, v = k[:, :5][:, idx], v[:, :5][:, idx]
        q = q[:, :5][:, idx]
    elif case == "weak_decay":
        k, g = mixed(0.8), -1e-4 * rand(B, T, Hkv)
    elif case == "zero_decay":
        k, g = mixed(0.5), torch.zeros_like(g)
    elif case == "strong_decay":
        g = -8.0 * rand(B, T, Hkv)
    elif case == "beta_extremes":
        k = mixed(0.7)
        choices = torch.tensor([0.0, 1e-4, 1 - 1e-4, 1.0], dtype=torch.float64)
        beta = choices[torch.randint(0, 4, (B, T, Hkv), generator=gen)]
    out: dict[str, Tensor | None] = {
        "q": q,
        "k": k,
        "v": v,
        "g": g,
        "beta": beta,
        "initial_state": randn(B, Hkv, K, V) if with_state else None,
    }
    for name, x in out.items():
        if x is not None:
            x = x.to(device=device, dtype=dtype if name != "initial_state" else torch.float32)
            out[name] = x.requires_grad_(True) if requires_grad else x
    return out


def norm_rel_err(actual: Tensor, expected: Tensor) -> float:
    """|actual - expected| / |expected| (Frobenius), in float64; NaN if ``actual`` is not finite."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float("nan")
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
