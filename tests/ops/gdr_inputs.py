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
