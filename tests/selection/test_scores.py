"""Head scores on the planted teacher, whose retrieval head (layer 1, head 2, KV group 1) is known."""

from __future__ import annotations

import pytest
import torch

import hydrahead_lit as hh
from hydrahead_lit.selection import (
    batch_probes,
    choose_groups,
    group_scores,
    make_probes,
    patching_effects,
    patching_scores,
    probe_model,
    retrieval_scores,
)
from tests.selection.planted import RETRIEVAL_HEAD


@pytest.fixture(scope="module")
def teacher_scores(teacher, probes):
    return retrieval_scores(probe_model(teacher), probes)


def test_planted_retrieval_head_ranks_first(teacher_scores):
    layer, head = RETRIEVAL_HEAD
    s = teacher_scores
    assert s.shape == (2, 4)
    assert divmod(int(s.argmax()), 4) == (layer, head)
    # The circuit copies every digit that follows a digit (4 of 6 passkey tokens, 6 of 8 niah tokens) except
    # where a key repeats a digit (then several needle positions tie); random heads almost never land on the
    # needle token being copied. 0.3 and a 2x margin leave room for the repeated-digit losses.
    assert s[layer, head] > 0.3
    others = torch.cat([s.flatten()[: layer * 4 + head], s.flatten()[layer * 4 + head + 1 :]])
    assert s[layer, head] > 2 * others.max()


def test_planted_group_is_chosen(teacher_scores):
    g = group_scores(teacher_scores, group_size=2)
    assert g.shape == (2, 2) and divmod(int(g.argmax()), 2) == (1, 1)
    plan = choose_groups(g, n_fa_groups=1, group_size=2, method="retrieval")  # 3:1 on 4 groups
    assert plan.fa_groups == ((), (1,)) and plan.ratio == 3.0


def test_group_reductions():
    s = torch.tensor([[0.25, 0.5, 0.125, 0.125]])  # exact in binary
    assert group_scores(s, 2, "max").tolist() == [[0.5, 0.125]]
    assert group_scores(s, 2, "mean").tolist() == [[0.375, 0.125]]
    with pytest.raises(ValueError, match="reduction"):
        group_scores(s, 2, "median")
    with pytest.raises(ValueError, match="groups of 3"):
        group_scores(s, 3)


def test_twin_model_scores_like_the_teacher(twin, probes, teacher_scores):
    # the twin model's FA path is the teacher's function, so the probes must agree (float32 rounding only)
    assert torch.allclose(retrieval_scores(twin, probes), teacher_scores, atol=1e-6)


def test_position_match_is_stricter(teacher, probes, teacher_scores):
    strict = retrieval_scores(probe_model(teacher), probes, match="position")
    # a hit on the exact source position is also a hit on a needle token equal to the answer token
    assert (strict <= teacher_scores + 1e-6).all()
    assert strict[RETRIEVAL_HEAD] > 0


def test_hybrid_student_maps_permuted_heads(teacher, probes, teacher_scores):
    # layer 1 keeps only group 1 (heads 2, 3), which conversion moves to the front; group 0 of layer 1
    # writes nothing (zero o_proj columns) so the function, hence the scores of FA heads, is unchanged
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [0, 1], 1: [1]})
    s = retrieval_scores(hh.convert(teacher, plan), probes)
    assert torch.isnan(s[1, :2]).all() and not torch.isnan(s[0]).any()
    assert torch.allclose(s[1, 2:], teacher_scores[1, 2:], atol=1e-6)


def test_only_correct_falls_back_with_a_warning(twin, probes, teacher_scores):
    # the planted teacher never predicts the space token that opens each answer: no probe is fully right
    with pytest.warns(UserWarning, match="no probe was answered correctly"):
        s = retrieval_scores(twin, probes, only_correct=True)
    assert torch.allclose(s, teacher_scores, atol=1e-6)


def test_patching_finds_the_circuit(twin, probes):
    eff = patching_effects(twin, probes)
    assert eff["nll"].shape == eff["accuracy"].shape == (2, 2)
    # groups whose heads write nothing (zero o_proj columns): replacing them cannot change anything
    assert eff["nll"][0, 1].abs() < 1e-5 and eff["nll"][1, 0].abs() < 1e-5
    assert eff["accuracy"][0, 1] == 0 and eff["accuracy"][1, 0] == 0
    # the previous-token group and the retrieval group carry the circuit: untrained twins lose answers
    assert eff["accuracy"][0, 0] > 0.1 and eff["accuracy"][1, 1] > 0.1
    # nothing is left on the modules: a later plain forward is the teacher's function
    assert not any(hasattr(l.self_attn, name) for l in twin.model.layers for name in ("patch_heads", "probe_rows"))


def test_scores_reject_wrong_models(teacher, probes):
    with pytest.raises(ValueError, match="not a HydraHead model"):
        retrieval_scores(teacher, probes)
    with pytest.raises(ValueError, match="twin model"):
        patching_effects(probe_model(teacher), probes)
    with pytest.raises(ValueError, match="metric"):
        patching_scores(teacher, probes, metric="kl")
    with pytest.raises(ValueError, match="match"):
        retrieval_scores(teacher, probes, match="fuzzy")


def test_probes_deterministic_and_batched(tok):
    a = make_probes(tok, ["passkey", "mqar"], length=160, count=3, seed=5)
    b = make_probes(tok, ["passkey", "mqar"], length=160, count=3, seed=5)
    assert [s.full_ids for s in a] == [s.full_ids for s in b]
    assert [s.task for s in a] == ["passkey", "mqar", "passkey"]
    mixed = a + make_probes(tok, ["passkey"], length=128, count=1, seed=5)
    batches = batch_probes(mixed, batch_size=2)
    assert [tuple(x.input_ids.shape) for x in batches] == [(1, 128), (2, 160), (1, 160)]
    for batch in batches:
        B, R = batch.row_mask.shape
        for i in range(B):
            for j in range(R):
                if batch.row_mask[i, j]:  # row r predicts the token at r + 1, copied from its source
                    r, src = int(batch.rows[j]), int(batch.sources[i, j])
                    assert batch.input_ids[i, r + 1] == batch.targets[i, j] == batch.input_ids[i, src]
                    assert batch.needle_start[i, j] <= src < batch.needle_end[i, j]
    mqar = batch_probes([a[1]])[0]
    assert mqar.num_tokens < len(a[1].answer_ids)  # the ',' separators are not copied, hence not scored


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tasks=[]), "empty"),
        (dict(tasks=["poem"]), "unknown probe task"),
        (dict(count=0), "num_probes"),
        (dict(length=10), "too short"),
    ],
)
def test_probe_errors(tok, kwargs, match):
    args = dict(tasks=["passkey"], length=160, count=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        make_probes(tok, **args)
