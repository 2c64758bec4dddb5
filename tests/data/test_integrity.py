"""A corrupt prepared corpus is found at data setup (sampled checksums and token ids), by a full
`python data/prepare.py --verify DIR`, or, mid-training, by the row that reads it: every error names
the chunk file."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from hydrahead_lit.data.demo import write_demo_corpus
from hydrahead_lit.data.prepare import prepare_corpus, sample_chunks
from hydrahead_lit.data.streaming import ChunkReadError
from hydrahead_lit.lit.datamodule import TokenDataModule

ROOT = Path(__file__).resolve().parents[2]
SEQ = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    src = write_demo_corpus(root / "src", n_docs=60, seed=3)
    prepare_corpus([str(p) for p in src], root / "corpus", "demo", SEQ, chunk_blocks=4)
    return root / "corpus"


def _copy(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "corpus"
    shutil.copytree(prepared, out)
    return out


def _poke(chunk: Path, token: int | None = None, position: int = 5) -> None:
    """Overwrite one token id of a chunk (uint16 ids; the chunk keeps its size); None: another valid id."""
    data = bytearray(chunk.read_bytes())
    end = len(data) - 2 * position
    old = int(np.frombuffer(bytes(data[end - 2 : end]), dtype=np.uint16)[0])
    data[end - 2 : end] = np.uint16((old + 1) % 1000 if token is None else token).tobytes()
    chunk.write_bytes(bytes(data))


def _prepare_cli():
    spec = importlib.util.spec_from_file_location("prepare_cli", ROOT / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_spreads_over_the_directory_within_its_budget() -> None:
    chunks = [{"chunk_bytes": 100}] * 50
    assert sample_chunks(chunks, 10_000) == list(range(50))  # small: everything
    picked = sample_chunks(chunks, 1_000)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 49
    assert sample_chunks(chunks, 0) == []


def test_setup_finds_a_corrupt_chunk(prepared, tmp_path) -> None:
    corpus = _copy(prepared, tmp_path)
    chunk = sorted(corpus.glob("chunk-*.bin"))[2]
    _poke(chunk)  # a valid id, but not the bytes that were written: only the checksum tells
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt \\(checksum"):
        TokenDataModule(str(corpus), tokenizer="demo", seq_len=SEQ, batch_size=2).setup("fit")


def test_a_bad_row_mid_training_names_its_chunk(prepared, tmp_path) -> None:
    corpus = _copy(prepared, tmp_path)
    chunk = sorted(corpus.glob("chunk-*.bin"))[-2]
    _poke(chunk, 60_000)  # past the 1,024-token vocabulary: the embedding would fail with a bare IndexError
    dm = TokenDataModule(str(corpus), tokenizer="demo", seq_len=SEQ, batch_size=2, shuffle=False, verify_mb=0)
    dm.setup("fit")  # sizes only: the corruption is not seen yet
    with pytest.raises(ChunkReadError, match=f"token id 60000 of row .* in chunk {chunk}; check the directory"):
        for _ in dm.train_dataloader():
            pass


def test_verify_an_existing_directory_from_the_command_line(prepared, tmp_path, capsys) -> None:
    cli = _prepare_cli()
    cli.main(["--verify", str(prepared)])
    assert f"verified {prepared}: " in capsys.readouterr().out
    corpus = _copy(prepared, tmp_path)
    chunk = sorted(corpus.glob("chunk-*.bin"))[0]
    _poke(chunk)
    with pytest.raises(SystemExit, match=f"error: chunk {chunk} is corrupt"):
        cli.main(["--verify", str(corpus)])
    with pytest.raises(SystemExit):
        cli.main(["--output", str(tmp_path / "x")])  # preparing still needs --tokenizer and --seq-len
    assert "needs --tokenizer, --seq-len" in capsys.readouterr().err
