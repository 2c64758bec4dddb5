"""The retrieval score counts a hit only inside the needle being retrieved, never in a distractor."""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.data.synthetic import make_sample
from hydrahead_lit.selection import batch_probes
from hydrahead_lit.selection.retrieval import _retrieved_fraction


@pytest.fixture(scope="module")
def multikey(tok):
    """A niah_multikey probe (four needles, one asked for) and its batch of one."""
    sample = make_sample("niah_multikey", tok, 256, 3)
    assert len(sample.needle_spans) > 1
    return sample, batch_probes([sample])[0]


def _one_hot_rows(batch, positions: list[int]):
    """probe_attn [1, 1, R, T] whose top-1 at answer row j is positions[j]."""
    R, T = batch.rows.numel(), batch.input_ids.shape[1]
    attn = torch.zeros(1, 1, R, T)
    attn[0, 0, torch.arange(R), torch.tensor(positions)] = 1.0
    return attn


def _same_token_elsewhere(sample, batch, inside_answer_needle: bool) -> list[int | None]:
    """Per answer row, a position != its source holding the same token, inside (or outside) the answer
    needle but inside some needle; None where there is none."""
    out = []
    for j in range(batch.rows.numel()):
        src, tgt = int(batch.sources[0, j]), int(batch.targets[0, j])
        lo, hi = int(batch.needle_start[0, j]), int(batch.needle_end[0, j])
        found = None
        for a, b in sample.needle_spans:
            if ((a, b) == (lo, hi)) != inside_answer_needle:
                continue
            found = next((p for p in range(a, b) if p != src and sample.input_ids[p] == tgt), found)
        out.append(found)
    return out


def test_the_answer_needle_is_the_one_holding_the_source(tok, multikey):
    sample, batch = multikey
    key = sample.metadata["keys"][0]  # the key asked for
    for j in range(batch.rows.numel()):
        lo, hi = int(batch.needle_start[0, j]), int(batch.needle_end[0, j])
        assert lo <= int(batch.sources[0, j]) < hi and (lo, hi) in sample.needle_spans
        assert key in tok.decode(sample.input_ids[lo:hi])


def test_a_distractor_needle_with_the_same_token_is_no_hit(multikey):
    sample, batch = multikey
    elsewhere = _same_token_elsewhere(sample, batch, inside_answer_needle=False)
    rows = [j for j, p in enumerate(elsewhere) if p is not None]
    assert rows, "the probe must have an answer digit repeated in a distractor needle"
    positions = [p if p is not None else int(batch.sources[0, j]) for j, p in enumerate(elsewhere)]
    frac = _retrieved_fraction(_one_hot_rows(batch, positions), batch, "token")
    n = batch.num_tokens
    assert frac.item() == pytest.approx((n - len(rows)) / n)  # only the rows that looked at their source hit


def test_the_same_token_inside_the_answer_needle_is_a_token_hit_not_a_position_hit(multikey):
    sample, batch = multikey
    inside = _same_token_elsewhere(sample, batch, inside_answer_needle=True)
    rows = [j for j, p in enumerate(inside) if p is not None]
    assert rows, "the probe must repeat an answer digit inside its own needle"
    positions = [p if p is not None else int(batch.sources[0, j]) for j, p in enumerate(inside)]
    attn = _one_hot_rows(batch, positions)
    assert _retrieved_fraction(attn, batch, "token").item() == pytest.approx(1.0)
    n = batch.num_tokens
    assert _retrieved_fraction(attn, batch, "position").item() == pytest.approx((n - len(rows)) / n)


def test_normalised_by_copied_answer_tokens(multikey):
    """Looking at every source is a score of 1 (Wu et al. would give copied tokens / needle length)."""
    _, batch = multikey
    attn = _one_hot_rows(batch, batch.sources[0].tolist())
    for match in ("token", "position"):
        assert _retrieved_fraction(attn, batch, match).item() == 1.0
