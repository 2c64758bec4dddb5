"""Budgets, score combination and every selection method on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.selection import (
    choose_groups,
    combine_scores,
    fa_budget,
    normalize,
    select_plan,
    validate_budget,
)

L, G, GS = 4, 4, 2  # 16 KV groups: ratio 7 -> 2 FA groups, ratio 3 -> 4, ratio 1 -> 8


def _score(seed: int = 0) -> torch.Tensor:
    return torch.rand(L, G, generator=torch.Generator().manual_seed(seed))


def test_budget_counts_and_errors():
    assert fa_budget(L, G, 7.0) == 2
    assert fa_budget(L, G, 3.0, "per_layer") == 4  # one group in every layer
    assert fa_budget(L, G, 3.0, "global", min_per_layer=1) == 4
    with pytest.raises(ValueError, match="cannot be met"):
        fa_budget(L, G, 5.0)  # 16 / 6 groups
    with pytest.raises(ValueError, match="every layer"):
        fa_budget(L, G, 7.0, "per_layer")  # half a group per layer
    with pytest.raises(ValueError, match="min_per_layer=1 needs 4"):
        fa_budget(L, G, 7.0, min_per_layer=1)
    with pytest.raises(ValueError, match="min_per_layer"):
        fa_budget(L, G, 3.0, "per_layer", min_per_layer=2)
    with pytest.raises(ValueError, match="mode"):
        fa_budget(L, G, 3.0, "per_head")


def test_choose_global_takes_the_best_cells():
    s = torch.zeros(L, G)
    s[2, 3], s[2, 1], s[0, 0] = 3.0, 2.0, 1.0
    plan = choose_groups(s, 2, GS, method="t")
    assert plan.fa_groups == ((), (), (1, 3), ()) and plan.method == "t" and plan.ratio == 7.0


def test_choose_per_layer_and_minimum():
    s = torch.zeros(L, G)
    s[0] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # layer 0 holds every high score
    per_layer = choose_groups(s, 4, GS, mode="per_layer")
    assert [len(g) for g in per_layer.fa_groups] == [1, 1, 1, 1] and per_layer.fa_groups[0] == (0,)
    glob = choose_groups(s, 4, GS)
    assert glob.fa_groups == ((0, 1, 2, 3), (), (), ())
    floor = choose_groups(s, 6, GS, min_per_layer=1)
    assert all(len(g) >= 1 for g in floor.fa_groups) and floor.num_fa_groups == 6
    assert floor.fa_groups[0] == (0, 1, 2)  # the two groups left over go to the best remaining cells
    with pytest.raises(ValueError, match="min_per_layer"):
        choose_groups(s, 2, GS, min_per_layer=1)
    with pytest.raises(ValueError, match="divisible"):
        choose_groups(s, 6, GS, mode="per_layer")


def test_ties_break_by_position_and_nan_is_rejected():
    plan = choose_groups(torch.ones(L, G), 3, GS)
    assert plan.fa_groups == ((0, 1, 2), (), (), ())
    bad = torch.ones(L, G)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        choose_groups(bad, 2, GS)


def test_normalizations():
    s = torch.tensor([[1.0, 100.0], [3.0, 3.0]])
    assert normalize(s, "rank").tolist() == [[0.0, 1.0], [0.5, 0.5]]  # ties share their average rank
    mm = normalize(s, "minmax")
    assert mm[0, 0] == 0 and mm[0, 1] == 1 and torch.allclose(mm[1], torch.full((2,), 2 / 99))
    assert normalize(torch.full((2, 2), 7.0)).eq(0.5).all()  # no preference
    with pytest.raises(ValueError, match="normalization"):
        normalize(s, "zscore")


def test_combine_weights():
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    b = torch.tensor([[30.0, 20.0, 10.0, 0.0]])
    assert torch.allclose(combine_scores({"a": a, "b": b}, {"a": 1.0, "b": 1.0}), torch.full((1, 4), 0.5))
    assert torch.allclose(
        combine_scores({"a": a, "b": b}, {"a": 3.0, "b": 1.0}), torch.tensor([[0.25, 5 / 12, 7 / 12, 0.75]])
    )
    assert torch.equal(combine_scores({"a": a, "b": b}, {"a": 1.0, "b": 0.0}), normalize(a))
    with pytest.raises(ValueError, match="not computed"):
        combine_scores({"a": a}, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        combine_scores({"a": a}, {"a": -1.0})
    with pytest.raises(ValueError, match="all score weights are zero"):
        combine_scores({"a": a}, {"a": 0.0})


def test_methods_share_one_budget():
    scores = {"retrieval": _score(1), "patching": _score(2), "alignment": _score(3)}
    kw = dict(num_layers=L, num_kv_groups=G, group_size=GS, ratio=3.0)
    for method in ("hydrahead", "retrieval", "patching", "alignment", "random"):
        sel = select_plan(method, scores, **kw)
        assert sel.plan.num_fa_groups == 4 and sel.plan.method == method and len(sel.chosen) == 4
    best = torch.topk(scores["patching"].flatten(), 4).indices.tolist()
    assert sorted(best) == sorted(l * G + g for l, g in select_plan("patching", scores, **kw).chosen)
    r1, r2 = select_plan("random", {}, seed=1, **kw), select_plan("random", {}, seed=1, **kw)
    assert r1.plan.fa_groups == r2.plan.fa_groups != select_plan("random", {}, seed=2, **kw).plan.fa_groups
    per_layer = select_plan("random", {}, mode="per_layer", **kw)
    assert [len(g) for g in per_layer.plan.fa_groups] == [1, 1, 1, 1]
    assert select_plan("all_la", {}, **kw).plan.num_fa_groups == 0
    with pytest.raises(ValueError, match="needs the 'alignment' score"):
        select_plan("alignment", {"retrieval": _score()}, **kw)


def test_layerwise_whole_layers():
    score = torch.zeros(L, G)
    score[2] = 1.0
    sel = select_plan("layerwise", {"retrieval": score}, L, G, GS, ratio=3.0)
    assert sel.plan.fa_groups == ((), (), (0, 1, 2, 3), ()) and sel.info["fa_layers"] == [2]
    # 7:1 asks for 2 groups; one whole layer (4 groups) is the nearest non-empty layer-wise plan
    near = select_plan("layerwise", {"retrieval": score}, L, G, GS, ratio=7.0)
    assert near.info["requested_fa_groups"] == 2 and near.info["fa_groups"] == 4 and "whole" in near.info["note"]
    given = select_plan("layerwise", {}, L, G, GS, ratio=3.0, fa_layers=[0, 3])
    assert given.plan.fa_groups[0] == given.plan.fa_groups[3] == (0, 1, 2, 3) and given.decision_score is None
    with pytest.raises(ValueError, match="no score"):
        select_plan("layerwise", {}, L, G, GS, ratio=3.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("hydrahead", 5.0), "cannot be met"),
        (("random", 7.0, "per_layer"), "every layer"),
        (("layerwise", 3.0, "global", 0, [9]), "do not exist"),
        (("nope", 3.0), "unknown selection method"),
    ],
)
def test_validate_budget_errors(args, match):
    method, ratio, *rest = args
    with pytest.raises(ValueError, match=match):
        validate_budget(method, L, G, ratio, *rest)


def test_all_la_needs_no_budget():
    validate_budget("all_la", L, G, 5.0)  # the ratio does not apply to an all-LA plan
