"""The FA budget (an LA:FA head ratio) and the choice of FA KV groups under it.

* ``global``: ``n = total_groups / (ratio + 1)`` groups over the whole model; with ``min_per_layer = m``
  every layer first gets its ``m`` best groups, then the rest go to the best remaining groups anywhere.
* ``per_layer``: every layer meets the ratio by itself: ``G / (ratio + 1)`` groups in each layer.

Ties are broken by (layer, group) order, so a choice is deterministic in its scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hydrahead_lit.modeling.plan import HeadPlan, fa_groups_for_ratio

MODES = ("global", "per_layer")


def fa_budget(num_layers: int, num_kv_groups: int, ratio: float, mode: str = "global", min_per_layer: int = 0) -> int:
    """Total number of FA KV groups for `ratio`; a ValueError says why a budget cannot be met."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= min_per_layer <= num_kv_groups:
        raise ValueError(f"min_per_layer must be in [0, {num_kv_groups}] (KV groups per layer), got {min_per_layer}")
    if mode == "per_layer":
        try:
            per_layer = fa_groups_for_ratio(num_kv_groups, ratio)
        except ValueError as e:
            msg = f"mode='per_layer' must meet the ratio in every layer of {num_kv_groups} KV groups: {e}"
            raise ValueError(msg) from None
        if min_per_layer > per_layer:
            raise ValueError(
                f"min_per_layer={min_per_layer} exceeds the {per_layer} FA group(s) per layer that ratio {ratio}:1 "
                "allows in mode='per_layer'"
            )
        return per_layer * num_layers
    n = fa_groups_for_ratio(num_layers * num_kv_groups, ratio)
    if min_per_layer * num_layers > n:
        raise ValueError(
            f"min_per_layer={min_per_layer} needs {min_per_layer * num_layers} FA groups over {num_layers} layers "
            f"but ratio {ratio}:1 allows only {n}: lower min_per_layer or the ratio"
        )
    return n


def _order(score: Tensor) -> list[int]:
    """Flat indices by descending score; stable, so ties keep (layer, group) order."""
    return torch.sort(score.flatten().double(), descending=True, stable=True).indices.tolist()


def choose_groups(
    score: Tensor,
    n_fa_groups: int,
    group_size: int,
    mode: str = "global",
    min_per_layer: int = 0,
    method: str = "manual",
) -> HeadPlan:
    """The `n_fa_groups` best KV groups by `score` [L, G] (higher keeps FA) under the mode's constraints."""
    s = torch.as_tensor(score).detach().float().cpu()
    if s.dim() != 2:
        raise ValueError(f"score must be [layers, kv groups], got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("score has NaN/inf entries: every KV group needs a finite score")
    L, G = s.shape
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= n_fa_groups <= L * G:
        raise ValueError(f"n_fa_groups must be in [0, {L * G}], got {n_fa_groups}")
    if not 0 <= min_per_layer <= G or min_per_layer * L > n_fa_groups:
        raise ValueError(f"min_per_layer={min_per_layer} cannot be met with {n_fa_groups} FA groups in {L} layers")
    chosen: set[tuple[int, int]] = set()
    if mode == "per_layer":
        if n_fa_groups % L:
            raise ValueError(f"mode='per_layer' needs n_fa_groups divisible by {L} layers, got {n_fa_groups}")
        for layer in range(L):
            chosen.update((layer, g) for g in _order(s[layer])[: n_fa_groups // L])
    else:
        for layer in range(L):
            chosen.update((layer, g) for g in _order(s[layer])[:min_per_layer])
        for i in _order(s):
            if len(chosen) >= n_fa_groups:
                break
            chosen.add(divmod(i, G))
    fa = tuple(tuple(sorted(g for (lay, g) in chosen if lay == layer)) for layer in range(L))
    return HeadPlan(L, G, group_size, fa, method)
