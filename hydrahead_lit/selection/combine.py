"""Combining head scores of different units (fractions, nats, MSE) into one ranking.

Each score is first normalised over all (layer, group) cells to [0, 1], then averaged with
non-negative weights: ``combined = sum_k w_k * norm(s_k) / sum_k w_k``. Every score is oriented so
that *higher means keep FA*.

* ``rank`` (default): ``norm(s)_i = rank_i / (n - 1)``, ties get their average rank. Insensitive to the
  scale and outliers of each score (a patching NLL can span orders of magnitude).
* ``minmax``: ``norm(s)_i = (s_i - min s) / (max s - min s)``; keeps the score's spacing.

A constant score carries no preference and maps to 0.5 under both.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALIZATIONS = ("rank", "minmax")
DEFAULT_WEIGHTS: dict[str, float] = {"retrieval": 1.0, "patching": 1.0, "alignment": 0.5}


def _check(name: str, score: Tensor) -> Tensor:
    s = torch.as_tensor(score).detach().float().cpu()
    if s.dim() != 2:
        raise ValueError(f"score {name!r} must be [layers, kv groups], got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"score {name!r} has NaN/inf entries (LA-only heads cannot be scored: use a twin model)")
    return s


def normalize(score: Tensor, how: str = "rank") -> Tensor:
    """Map a [L, G] score to [0, 1] over all cells (see the module docstring)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {how!r}")
    s = _check("score", score)
    flat = s.flatten().double()
    n = flat.numel()
    if n == 1 or bool((flat == flat[0]).all()):
        return torch.full_like(s, 0.5)
    if how == "minmax":
        return ((flat - flat.min()) / (flat.max() - flat.min())).float().view_as(s)
    less = (flat[None, :] < flat[:, None]).sum(1).double()  # O(n^2) cells: n = L * G is small
    equal = (flat[None, :] == flat[:, None]).sum(1).double()
    avg_rank = less + (equal - 1) / 2
    return (avg_rank / (n - 1)).float().view_as(s)


def combine_scores(scores: dict[str, Tensor], weights: dict[str, float], how: str = "rank") -> Tensor:
    """Weighted mean of normalised scores, [L, G]; every weighted name must be among `scores`."""
    active = {k: float(w) for k, w in weights.items() if float(w) != 0.0}
    bad = {k: w for k, w in active.items() if w < 0}
    if bad:
        raise ValueError(f"score weights must be >= 0 (orient scores instead), got {bad}")
    missing = sorted(set(active) - set(scores))
    if missing:
        raise ValueError(f"weights name score(s) {missing} that were not computed; available: {sorted(scores)}")
    if not active:
        raise ValueError(f"all score weights are zero: give at least one of {sorted(scores)} a positive weight")
    shapes = {tuple(torch.as_tensor(scores[k]).shape) for k in active}
    if len(shapes) != 1:
        raise ValueError(f"scores to combine have different shapes: {shapes}")
    total = sum(active.values())
    return sum(w * normalize(scores[k], how) for k, w in active.items()) / total
