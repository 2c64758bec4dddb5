"""Held-out perplexity on a prepared LitData directory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hydrahead_lit.eval.load import load_model
from hydrahead_lit.eval.perplexity import perplexity


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    from hydrahead_lit.data.demo import write_demo_corpus
    from hydrahead_lit.data.prepare import prepare_corpus

    root = tmp_path_factory.mktemp("held_out")
    write_demo_corpus(root / "text", 30, seed=1)
    prepare_corpus(str(root / "text"), root / "prepared", "demo", seq_len=64, chunk_blocks=4)
    return root / "prepared"


def test_matches_the_models_own_loss(model_dirs, held_out) -> None:
    model, tok, _ = load_model(model_dirs["teacher"])
    got = perplexity(model, held_out, tok, max_rows=3, batch_size=2)
    assert got["rows"] == 3 and got["seq_len"] == 64 and got["tokens"] == 3 * 64
    from litdata import StreamingDataset, TokensLoader

    ds = StreamingDataset(str(held_out), item_loader=TokensLoader(block_size=65), shuffle=False)
    rows = torch.stack([torch.as_tensor(ds[i]).long() for i in range(3)])
    with torch.no_grad():  # transformers' own mean cross-entropy over the same windows
        loss = model(input_ids=rows, labels=rows).loss.item()
    # float32 sums over 192 tokens in a different order: agree to ~1e-5 relative
    assert got["ppl"] == pytest.approx(math.exp(loss), rel=1e-4)
    # batching changes only the float32 summation order (relative change ~1e-7)
    assert perplexity(model, held_out, tok, max_rows=3, batch_size=3)["ppl"] == pytest.approx(got["ppl"], rel=1e-5)


def test_bad_directories(model_dirs, held_out, tmp_path) -> None:
    model, tok, _ = load_model(model_dirs["teacher"])
    with pytest.raises(ValueError, match="does not exist"):
        perplexity(model, tmp_path / "missing", tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a prepared corpus"):
        perplexity(model, tmp_path / "empty", tok)
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        perplexity(model, held_out, tok, seq_len=200, limit=128)
