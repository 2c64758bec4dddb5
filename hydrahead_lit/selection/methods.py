"""One entry for every selection method: HydraHead's combined scores, single scores, and the baselines.

Methods: ``hydrahead`` (weighted combination of the scores), ``retrieval`` / ``patching`` /
``alignment`` (one score alone), ``random`` (uniform draw under the same budget and constraints),
``layerwise`` (whole layers keep FA) and ``all_la`` (no FA at all; the ratio does not apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hydrahead_lit.modeling.plan import HeadPlan, fa_groups_for_ratio
from hydrahead_lit.selection.budget import choose_groups, fa_budget
from hydrahead_lit.selection.combine import DEFAULT_WEIGHTS, combine_scores, normalize

METHODS = ("hydrahead", "retrieval", "patching", "alignment", "random", "layerwise", "all_la")
SINGLE_SCORES = ("retrieval", "patching", "alignment")


@dataclass
class Selection:
    """A chosen plan, the [L, G] score it was chosen by (None for all_la / given layers), and notes."""

    plan: HeadPlan
    decision_score: Tensor | None
    info: dict = field(default_factory=dict)

    @property
    def chosen(self) -> list[list[int]]:
        return [[layer, g] for layer, groups in enumerate(self.plan.fa_groups) for g in groups]


def needs_scores(method: str, fa_layers: Sequence[int] | None = None) -> bool:
    """Whether `method` decides from head scores (random, all_la and given layers do not)."""
    return method in ("hydrahead", *SINGLE_SCORES) or (method == "layerwise" and fa_layers is None)


def validate_budget(
    method: str,
    num_layers: int,
    num_kv_groups: int,
    ratio: float,
    mode: str = "global",
    min_per_layer: int = 0,
    fa_layers: Sequence[int] | None = None,
) -> None:
    """Raise a ValueError now (before any training) if `method` cannot meet this budget on this model."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")
    if method == "all_la":
        return
    if method == "layerwise":
        fa_groups_for_ratio(num_layers * num_kv_groups, ratio)
        bad = [i for i in fa_layers or [] if not 0 <= int(i) < num_layers]
        if bad:
            raise ValueError(f"fa_layers {bad} do not exist (the model has layers 0..{num_layers - 1})")
        return
    fa_budget(num_layers, num_kv_groups, ratio, mode, min_per_layer)


def select_plan(
    method: str,
    scores: dict[str, Tensor],
    num_layers: int,
    num_kv_groups: int,
    group_size: int,
    ratio: float = 7.0,
    mode: str = "global",
    min_per_layer: int = 0,
    weights: dict[str, float] | None = None,
    normalization: str = "rank",
    seed: int = 0,
    fa_layers: Sequence[int] | None = None,
) -> Selection:
    """Choose FA KV groups by `method` for an LA:FA `ratio` (see the module docstring)."""
    validate_budget(method, num_layers, num_kv_groups, ratio, mode, min_per_layer, fa_layers)
    shape = dict(num_layers=num_layers, num_kv_groups=num_kv_groups, group_size=group_size)
    if method == "all_la":
        plan = HeadPlan(num_layers, num_kv_groups, group_size, ((),) * num_layers, "all_la")
        return Selection(plan, None, {"note": "all_la keeps no FA group; the ratio does not apply"})
    if method == "layerwise":
        return _layerwise(scores, ratio, weights, normalization, fa_layers, **shape)
    n_fa = fa_budget(num_layers, num_kv_groups, ratio, mode, min_per_layer)
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        score = torch.rand(num_layers, num_kv_groups, generator=gen, device="cpu")
        info = {"seed": seed, "note": "uniform random draw under the same budget and constraints"}
    elif method == "hydrahead":
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        score = combine_scores(scores, w, normalization)
        info = {"weights": w, "normalization": normalization}
    else:
        if method not in scores:
            raise ValueError(f"method {method!r} needs the {method!r} score; computed: {sorted(scores)}")
        score = normalize(scores[method], normalization)
        info = {"normalization": normalization}
    plan = choose_groups(score, n_fa, group_size, mode, min_per_layer, method)
    plan.meta.update(ratio=ratio, mode=mode, min_per_layer=min_per_layer)
    return Selection(plan, score, info)


def _layerwise(
    scores: dict[str, Tensor],
    ratio: float,
    weights: dict[str, float] | None,
    normalization: str,
    fa_layers: Sequence[int] | None,
    num_layers: int,
    num_kv_groups: int,
    group_size: int,
) -> Selection:
    """Whole layers keep FA: as many as come nearest to the requested number of FA groups (at least one)."""
    requested = fa_groups_for_ratio(num_layers * num_kv_groups, ratio)
    score = None
    if fa_layers is None:
        if not scores:
            raise ValueError("method 'layerwise' without fa_layers picks layers by score, but no score was computed")
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        score = combine_scores(scores, {k: v for k, v in w.items() if k in scores}, normalization)
        n_layers = max(1, round(requested / num_kv_groups))
        layer_score = score.sum(1)
        fa_layers = torch.sort(layer_score.double(), descending=True, stable=True).indices[:n_layers].tolist()
    layers = sorted(int(i) for i in fa_layers)
    groups = tuple(tuple(range(num_kv_groups)) if i in layers else () for i in range(num_layers))
    plan = HeadPlan(num_layers, num_kv_groups, group_size, groups, "layerwise")
    plan.meta.update(ratio=ratio, fa_layers=layers)
    info = {
        "fa_layers": layers,
        "requested_fa_groups": requested,
        "fa_groups": plan.num_fa_groups,
        "note": "layer-wise plans keep whole layers: the FA group count is the nearest whole-layer multiple "
        "to the requested budget (ratio achieved: "
        f"{'inf' if plan.num_fa_groups == 0 else round(plan.ratio, 4)}:1)",
    }
    return Selection(plan, score, info)
