import math

import pytest

import hydrahead_lit as hh
from tests.modeling.tiny import tiny_teacher


@pytest.fixture(scope="module")
def config():
    return tiny_teacher("qwen3", layers=4, heads=4, kv_heads=2).config  # 8 KV groups of 2 query heads


def test_constructors_and_properties(config):
    plan = hh.HeadPlan.from_fa_groups(config, {1: [1], 3: [0, 1]})
    assert plan.fa_groups == ((), (1,), (), (0, 1))
    assert plan.num_fa_groups == 3 and plan.total_groups == 8
    assert plan.ratio == pytest.approx(5 / 3)
    assert plan.kv_cache_fraction == pytest.approx(3 / 8)
    assert plan.head_order(1) == [2, 3, 0, 1]  # FA group 1's heads first
    assert plan.num_fa_heads(3) == 4

    assert hh.HeadPlan.all_fa(config).kv_cache_fraction == 1.0
    assert math.isinf(hh.HeadPlan.all_la(config).ratio)
    lw = hh.HeadPlan.layerwise(config, fa_layers=[2])
    assert lw.fa_groups == ((), (), (0, 1), ()) and lw.ratio == 3.0


def test_random_is_deterministic_and_meets_ratio(config):
    a = hh.HeadPlan.random(config, ratio=7, seed=3)
    assert a == hh.HeadPlan.random(config, ratio=7, seed=3)
    assert a.num_fa_groups == 1 and a.ratio == 7.0
    assert hh.HeadPlan.random(config, ratio=3, seed=3).num_fa_groups == 2


def test_save_load_roundtrip(config, tmp_path):
    plan = hh.HeadPlan.from_fa_groups(config, {0: [1, 0]})
    plan.save(tmp_path / "plan.json")
    assert hh.HeadPlan.load(tmp_path / "plan.json") == plan


@pytest.mark.parametrize(
    "mapping, match",
    [({7: [0]}, "layer"), ({0: [5]}, "group"), ({0: [1, 1]}, "twice")],
)
def test_bad_plans_raise(config, mapping, match):
    with pytest.raises(ValueError, match=match):
        hh.HeadPlan.from_fa_groups(config, mapping)


def test_ratio_that_cannot_be_met(config):
    with pytest.raises(ValueError, match="cannot be met"):
        hh.HeadPlan.random(config, ratio=5, seed=0)  # 8 groups / 6 is not whole
    with pytest.raises(ValueError, match="cannot be met"):
        hh.fa_groups_for_ratio(8, 15)  # would need half a group


def test_incompatible_plan_is_refused(config):
    other = tiny_teacher("qwen3", layers=2).config
    plan = hh.HeadPlan.all_la(other)
    with pytest.raises(ValueError, match="plan is for"):
        plan.check_compatible(config)


def test_missing_plan_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        hh.HeadPlan.load(tmp_path / "nope.json")
