"""The suite's generation and scoring path: an oracle scores 100, a real tiny model is deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hydrahead_lit.eval.load import load_model
from hydrahead_lit.eval.ruler import average_by_length, completion_text, make_cell, run_cell, run_suite

TASKS = ["passkey", "niah_single", "mqar"]


class Oracle(nn.Module):
    """Answers each known prompt with its reference answer, then a newline and junk (must be cut off)."""

    def __init__(self, tok, answers: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.answers = answers
        self.tail = tok("\n 999 junk", add_special_tokens=False)["input_ids"]

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        rows = [row.tolist() + (self.answers[tuple(row.tolist())] + self.tail)[:max_new_tokens] for row in input_ids]
        width = max(map(len, rows))
        return torch.tensor([r + [0] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("task", ["passkey", "niah_multivalue", "mqar", "variable_tracking"])
def test_oracle_scores_100(tok, task) -> None:
    samples = make_cell(task, tok, 256, 3, seed=5)
    oracle = Oracle(tok, {tuple(s.input_ids): s.answer_ids for s in samples})
    cell = run_cell(oracle, tok, task, 256, 3, seed=5, max_new_tokens=64, batch_size=2)
    assert cell["n"] == 3
    assert cell["score"] == cell["string_match_part"] == cell["exact_match"] == 100.0
    assert "junk" not in cell["examples"][0]["prediction"]  # scored text stops at the newline


def test_truncated_answer_scores_partially(tok) -> None:
    # niah_multivalue has 4 values, each a 7-digit number: 16 tokens of the demo tokenizer hold the
    # first two values (" d d d d d d d" is 8 tokens, "," 1), so string_match_all gives 2/4 per sample.
    samples = make_cell("niah_multivalue", tok, 256, 2, seed=1)
    oracle = Oracle(tok, {tuple(s.input_ids): s.answer_ids for s in samples})
    cell = run_cell(oracle, tok, "niah_multivalue", 256, 2, seed=1, max_new_tokens=17)
    assert cell["score"] == 50.0 and cell["string_match_part"] == 100.0 and cell["exact_match"] == 0.0


def test_completion_text_stops_at_eos_and_newline(tok) -> None:
    ids = tok(" 123\n456", add_special_tokens=False)["input_ids"]
    assert completion_text(tok, ids) == " 123"
    assert completion_text(tok, tok(" 77", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, 5]) == " 77"


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_suite_deterministic(model_dirs, kind) -> None:
    model, tok, got_kind = load_model(model_dirs[kind], tokenizer="demo")
    assert got_kind == kind
    tasks = TASKS[:2]
    args = dict(tasks=tasks, lengths=[160, 256], num_samples=2, seed=0, max_new_tokens=4, batch_size=2, limit=320)
    first, second = run_suite(model, tok, **args), run_suite(model, tok, **args)
    assert first == second
    assert set(first) == set(tasks) and all(set(c) == {160, 256} for c in first.values())
    assert all(0.0 <= c["score"] <= 100.0 and c["n"] == 2 for cells in first.values() for c in cells.values())
    avg = average_by_length(first)
    assert avg[160] == pytest.approx(sum(first[t][160]["score"] for t in tasks) / 2, abs=1e-3)


def test_suite_rejects_bad_input(model_dirs) -> None:
    model, tok, _ = load_model(model_dirs["teacher"])
    with pytest.raises(ValueError, match="unknown task"):
        run_suite(model, tok, ["niah_single", "qa_1"], [160], 1)
    with pytest.raises(ValueError, match="exceed the model's limit of 320"):
        run_suite(model, tok, ["niah_single"], [160, 1024], 1, limit=320)


def test_noise_haystack_and_bad_haystack(tok) -> None:
    from hydrahead_lit.eval.ruler import make_haystack

    sample = make_cell("niah_single", tok, 200, 1, seed=0, haystack=make_haystack("noise"))[0]
    assert "The grass is green." in tok.decode(sample.input_ids)  # RULER's noise filler
    with pytest.raises(ValueError, match="neither 'procedural', 'noise'"):
        make_haystack("/nonexistent/corpus")


def test_batching_does_not_change_student_predictions(model_dirs) -> None:
    """Equal-length prompts decoded together must give what each gives alone (LA states per row)."""
    model, tok, _ = load_model(model_dirs["student"], tokenizer="demo")
    alone = run_cell(model, tok, "niah_single", 200, 2, seed=0, max_new_tokens=5, batch_size=1)
    together = run_cell(model, tok, "niah_single", 200, 2, seed=0, max_new_tokens=5, batch_size=2)
    assert alone["examples"] == together["examples"]  # both samples (examples keeps two)
