"""Synthetic retrieval probes for head selection: deterministic samples, stacked into batches.

Every score in this package is teacher-forced on the probes' ``full_ids`` (prompt + answer). The row
that *predicts* answer token ``p`` is position ``p - 1``; `ProbeBatch.rows` lists those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hydrahead_lit.data.synthetic import TASKS, RetrievalSample, make_sample

DEFAULT_PROBE_TASKS: tuple[str, ...] = ("passkey", "niah_single", "niah_multikey")


def make_probes(
    tokenizer, tasks: Sequence[str] = DEFAULT_PROBE_TASKS, length: int = 512, count: int = 16, seed: int = 0
) -> list[RetrievalSample]:
    """`count` samples of exactly `length` tokens, cycling through `tasks`; deterministic in all arguments.

    Sample ``i`` is task ``tasks[i % len(tasks)]`` with seed ``seed * 100_003 + i`` (distinct per sample).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("probe_tasks is empty: name at least one synthetic task, e.g. 'passkey'")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    if count < 1:
        raise ValueError(f"num_probes must be >= 1, got {count}")
    return [make_sample(tasks[i % len(tasks)], tokenizer, length, seed * 100_003 + i) for i in range(count)]


@dataclass
class ProbeBatch:
    """Probes of one length, stacked.

    `rows` [R] are the union over the batch of the query positions that predict a scored answer token;
    `row_mask` [B, R] marks which of them belong to each sample; `targets` [B, R] holds the token each row
    predicts; `sources` [B, R] the needle position it is copied from (-1 where none); `needle_start` and
    `needle_end` [B, R] the span [start, end) of that needle, the one being retrieved (-1 where none):
    a distractor needle (e.g. another key's value in `niah_multikey`) is never it.
    """

    input_ids: Tensor  # [B, T] full_ids (prompt + answer)
    rows: Tensor  # [R]
    row_mask: Tensor  # [B, R] bool
    targets: Tensor  # [B, R]
    sources: Tensor  # [B, R]
    needle_start: Tensor  # [B, R]
    needle_end: Tensor  # [B, R]

    def to(self, device: torch.device | str) -> ProbeBatch:
        return ProbeBatch(*(t.to(device) for t in vars(self).values()))

    @property
    def num_tokens(self) -> int:
        """Scored answer tokens in the batch."""
        return int(self.row_mask.sum())


def _source_needle(s: RetrievalSample, src: int) -> tuple[int, int]:
    """[start, end) of the needle of `s` that holds position `src`, (-1, -1) for an uncopied token."""
    if src < 0:
        return -1, -1
    for lo, hi in s.needle_spans:
        if lo <= src < hi:
            return lo, hi
    raise ValueError(f"probe of task {s.task!r} (seed {s.seed}): answer source {src} lies in no needle span")


def _stack(samples: list[RetrievalSample], copied_only: bool) -> ProbeBatch:
    per_sample: list[dict[int, tuple[int, int]]] = []  # row -> (target, source)
    for s in samples:
        start, _ = s.answer_span
        pairs = {}
        for i, (tok, src) in enumerate(zip(s.answer_ids, s.answer_source_positions)):
            if copied_only and src < 0:  # separators such as ',' are not copied from a needle
                continue
            pairs[start + i - 1] = (tok, src)
        if not pairs:
            raise ValueError(f"probe of task {s.task!r} (seed {s.seed}) has no scored answer token")
        per_sample.append(pairs)
    rows = sorted({r for pairs in per_sample for r in pairs})
    col = {r: j for j, r in enumerate(rows)}
    B, R = len(samples), len(rows)
    row_mask = torch.zeros(B, R, dtype=torch.bool)
    targets = torch.zeros(B, R, dtype=torch.long)
    sources = torch.full((B, R), -1, dtype=torch.long)
    needle_start = torch.full((B, R), -1, dtype=torch.long)
    needle_end = torch.full((B, R), -1, dtype=torch.long)
    for b, (s, pairs) in enumerate(zip(samples, per_sample)):
        for r, (tok, src) in pairs.items():
            row_mask[b, col[r]] = True
            targets[b, col[r]] = tok
            sources[b, col[r]] = src
            needle_start[b, col[r]], needle_end[b, col[r]] = _source_needle(s, src)
    input_ids = torch.tensor([s.full_ids for s in samples], dtype=torch.long)
    rows_t = torch.tensor(rows, dtype=torch.long)
    return ProbeBatch(input_ids, rows_t, row_mask, targets, sources, needle_start, needle_end)


def batch_probes(samples: Sequence[RetrievalSample], batch_size: int = 8, copied_only: bool = True) -> list[ProbeBatch]:
    """Stack samples of equal length into batches of at most `batch_size` (no padding is ever needed).

    With `copied_only` only answer tokens copied from a needle are scored (the retrieval score needs a
    source; separators carry none).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not samples:
        raise ValueError("no probe samples given")
    by_length: dict[int, list[RetrievalSample]] = {}
    for s in samples:
        by_length.setdefault(len(s.full_ids), []).append(s)
    batches = []
    for length in sorted(by_length):
        group = by_length[length]
        for i in range(0, len(group), batch_size):
            batches.append(_stack(group[i : i + batch_size], copied_only))
    return batches
