from __future__ import annotations

import pytest

from hydrahead_lit.data.haystack import Haystack
from hydrahead_lit.data.synthetic import TASKS, make_sample
from hydrahead_lit.data.templates import MQAR_HEADER, NIAH_HEADER, PASSKEY_HEADER, VT_HEADER, template_texts


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [400, 1025, 2049])
def test_exact_length_and_answer_positions(any_tok, task, length):
    s = make_sample(task, any_tok, length, seed=11)
    assert len(s.full_ids) == length
    assert s.task == task and s.seed == 11
    assert len(s.answer_source_positions) == len(s.answer_ids) > 0
    spans = s.needle_spans
    assert all(0 <= a < b <= len(s.input_ids) for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:])), "needles overlap"
    copied = [(i, p) for i, p in enumerate(s.answer_source_positions) if p >= 0]
    assert copied, "no answer token is copied from a needle"
    for i, p in copied:
        assert s.input_ids[p] == s.answer_ids[i]
        assert any(a <= p < b for a, b in spans), f"source {p} outside every needle"
    # Every reference answer is spelled out by the copied tokens and sits inside some needle.
    copied_text = any_tok.decode([s.answer_ids[i] for i, _ in copied]).replace(" ", "")
    for ans in s.answers:
        assert ans in copied_text
        assert any(ans in any_tok.decode(s.input_ids[a:b]).replace(" ", "") for a, b in spans)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_in_seed(demo_tok, gpt2_like_tok, task):
    for tok in (demo_tok, gpt2_like_tok):
        a, b = make_sample(task, tok, 800, seed=5), make_sample(task, tok, 800, seed=5)
        assert a == b
        c = make_sample(task, tok, 800, seed=6)
        assert c.full_ids != a.full_ids


def test_answers_decode_from_answer_ids(demo_tok, gpt2_like_tok):
    # Both tokenizers are byte-level, so decoding is exact: every reference string appears.
    for tok in (demo_tok, gpt2_like_tok):
        for task in TASKS:
            s = make_sample(task, tok, 1000, seed=2)
            pred = tok.decode(s.answer_ids)
            assert all(ans in pred for ans in s.answers), (task, pred, s.answers)


def test_task_options_change_the_structure(demo_tok):
    s = make_sample("niah_multikey", demo_tok, 1500, seed=0, num_keys=6)
    assert len(s.needle_spans) == 6 and len(s.answers) == 1
    s = make_sample("niah_multivalue", demo_tok, 1500, seed=0, num_values=3)
    assert len(s.needle_spans) == 3 and len(s.answers) == 3
    s = make_sample("variable_tracking", demo_tok, 1500, seed=0, num_chains=2, num_hops=3)
    assert len(s.needle_spans) == 8 and len(s.answers) == 4
    s = make_sample("mqar", demo_tok, 1500, seed=0, num_pairs=10, num_queries=3)
    assert len(s.needle_spans) == 10 and len(s.answers) == 3
    # mqar without num_pairs packs pairs densely: they fill most of the sample.
    s = make_sample("mqar", demo_tok, 1500, seed=0)
    assert sum(b - a for a, b in s.needle_spans) > 0.8 * 1500


def test_depth_places_the_needle(demo_tok):
    early = make_sample("niah_single", demo_tok, 2000, seed=0, depth=0.0)
    late = make_sample("niah_single", demo_tok, 2000, seed=0, depth=1.0)
    assert early.needle_spans[0][0] < 100
    assert late.needle_spans[0][1] > 1900
    mid = make_sample("passkey", demo_tok, 2000, seed=0, depth=0.5)
    assert abs(mid.needle_spans[0][0] - 1000) < 100  # snapped to a sentence start nearby


def test_procedural_filler_ends_on_sentence(demo_tok):
    # The filler is made of whole sentences, so the text before the question ends with a period.
    for seed in range(5):
        s = make_sample("niah_single", demo_tok, 3000, seed=seed)
        text = demo_tok.decode(s.input_ids)
        assert text[: text.index("\nWhat are all")].endswith(".")


@pytest.mark.parametrize("haystack", [Haystack.noise(), Haystack.from_texts(["One. Two words here! Three?"])])
def test_other_haystacks(demo_tok, haystack):
    s = make_sample("niah_single", demo_tok, 600, seed=1, haystack=haystack)
    assert len(s.full_ids) == 600
    assert s.input_ids[s.answer_source_positions[0]] == s.answer_ids[0]


def test_bad_arguments(demo_tok):
    with pytest.raises(ValueError, match="valid tasks: passkey"):
        make_sample("niah", demo_tok, 500, seed=0)
    with pytest.raises(ValueError, match="too short for task 'niah_multiquery'"):
        make_sample("niah_multiquery", demo_tok, 40, seed=0)
    with pytest.raises(ValueError, match="unknown option"):
        make_sample("passkey", demo_tok, 500, seed=0, num_keys=3)
    with pytest.raises(ValueError, match="haystack"):
        Haystack("essays")
    with pytest.raises(ValueError, match="distinct 1-digit"):
        make_sample("niah_multivalue", demo_tok, 5000, seed=0, num_values=12, value_digits=1)


@pytest.mark.parametrize(
    ("task", "header"),
    [
        ("passkey", PASSKEY_HEADER),
        ("niah_multikey", NIAH_HEADER),
        ("mqar", MQAR_HEADER),
        ("variable_tracking", VT_HEADER),
    ],
)
def test_samples_open_with_the_template_the_demo_tokenizer_learned(demo_tok, task: str, header: str) -> None:
    assert header in template_texts()
    assert demo_tok.decode(make_sample(task, demo_tok, 400, seed=1).input_ids).startswith(header)
