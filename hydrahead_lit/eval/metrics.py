"""String-match scores of RULER and an exact-match score, as torchmetrics ``Metric`` objects.

RULER (Hsieh et al. 2024, ``scripts/eval/synthetic/constants.py``) scores niah, vt, cwe and fwe with
``string_match_all``: per sample, the fraction of reference strings that occur (case-insensitively)
in the prediction, averaged over samples and multiplied by 100. QA tasks use ``string_match_part``:
100 if any reference occurs. Both are reimplemented here so they accumulate over batches and
devices like any other torchmetrics metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _check(preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
    if isinstance(preds, str) or len(preds) != len(targets):
        raise ValueError(f"need one prediction string per sample and one list of references each "
                         f"(got {len(preds)} predictions for {len(targets)} reference lists)")  # fmt: skip
    for refs in targets:
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError("each sample's references must be a non-empty list of strings")


def string_match_all(pred: str, refs: Sequence[str]) -> float:
    """Fraction of ``refs`` occurring in ``pred`` (case-insensitive), in [0, 1]."""
    low = pred.lower()
    return sum(r.lower() in low for r in refs) / len(refs)


def string_match_part(pred: str, refs: Sequence[str]) -> float:
    """1.0 if any of ``refs`` occurs in ``pred`` (case-insensitive), else 0.0."""
    low = pred.lower()
    return float(any(r.lower() in low for r in refs))


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or trailing full stop."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(".").strip()


class _MeanScore(Metric):
    """Mean over samples of a per-sample score in [0, 1], reported x100 (RULER's scale)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _score(self, pred: str, refs: Sequence[str]) -> float:
        raise NotImplementedError

    def update(self, preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        _check(preds, targets)
        self.total += sum(self._score(p, r) for p, r in zip(preds, targets))
        self.count += len(preds)

    def compute(self) -> Tensor:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update")
        return 100.0 * self.total / self.count


class StringMatchAll(_MeanScore):
    """RULER ``string_match_all``: mean fraction of references found in each prediction, x100."""

    def _score(self, pred: str, refs: Sequence[str]) -> float:
        return string_match_all(pred, refs)


class StringMatchPart(_MeanScore):
    """RULER ``string_match_part``: share of predictions that contain any reference, x100."""

    def _score(self, pred: str, refs: Sequence[str]) -> float:
        return string_match_part(pred, refs)


class ExactMatch(_MeanScore):
    """Share of predictions equal to the reference answer after :func:`normalize_answer`, x100.

    Each sample's references are ``[answer_text]`` (a one-element list: the whole expected
    continuation, e.g. ``"8661386, 1204"``); stricter than string matching, which ignores extra text.
    """

    def _score(self, pred: str, refs: Sequence[str]) -> float:
        return float(any(normalize_answer(pred) == normalize_answer(r) for r in refs))
