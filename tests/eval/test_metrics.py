"""RULER scorers on known answers (values computed by hand)."""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.eval.metrics import ExactMatch, StringMatchAll, StringMatchPart, normalize_answer


def test_string_match_all_known_answers() -> None:
    m = StringMatchAll()
    m.update(["The numbers are 123 and 456.", "nothing here", "ABCDE fghij"],
             [["123", "456", "789"], ["42"], ["abcde", "FGHIJ"]])  # fmt: skip
    # per sample: 2/3, 0, 1 (case-insensitive) -> mean 5/9 -> x100
    assert m.compute().item() == pytest.approx(500 / 9, abs=1e-9)


def test_string_match_part_known_answers() -> None:
    m = StringMatchPart()
    m.update(["... 456 ...", "no", "Paris"], [["123", "456"], ["yes"], ["paris", "london"]])
    assert m.compute().item() == pytest.approx(200 / 3, abs=1e-9)


def test_exact_match_normalisation() -> None:
    m = ExactMatch()
    m.update([" 8661386, 1204. ", "8661386, 1204 and more", "8661386,  1204"],
             [["8661386, 1204"], ["8661386, 1204"], ["8661386, 1204"]])  # fmt: skip
    # the first (extra spaces + full stop) matches; the second has extra text; the third a double space
    assert m.compute().item() == pytest.approx(200 / 3, abs=1e-9)
    assert normalize_answer("  A  b.\n") == "a b"


def test_accumulates_like_one_update() -> None:
    preds, refs = ["1 2", "3", "x", "2"], [["1", "2"], ["4"], ["x"], ["1", "2"]]
    whole, parts = StringMatchAll(), StringMatchAll()
    whole.update(preds, refs)
    parts.update(preds[:1], refs[:1])
    parts.update(preds[1:], refs[1:])
    assert torch.equal(whole.compute(), parts.compute())
    assert whole.compute().item() == pytest.approx(100 * (1 + 0 + 1 + 0.5) / 4)


@pytest.mark.parametrize(
    "preds, refs",
    [(["a"], [["a"], ["b"]]), (["a"], [[]]), ("ab", [["a"], ["b"]]), (["a"], ["a"])],
    ids=["count-mismatch", "empty-refs", "str-preds", "str-refs"],
)
def test_bad_input(preds, refs) -> None:
    with pytest.raises(ValueError):
        StringMatchAll().update(preds, refs)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_before_update() -> None:
    with pytest.raises(ValueError, match="before any update"):
        StringMatchPart().compute()
