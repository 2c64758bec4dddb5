from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from litdata import StreamingDataset, TokensLoader

from hydrahead_lit.data.demo import demo_documents
from hydrahead_lit.data.manifest import Manifest, tokenizer_fingerprint, validate
from hydrahead_lit.data.prepare import prepare_corpus, verify_prepared
from hydrahead_lit.data.sources import Shard, expand_inputs, make_shards, read_documents

SEQ = 32


def _write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _stream(directory, seq_len: int = SEQ) -> list[int]:
    ds = StreamingDataset(str(directory), item_loader=TokensLoader(block_size=seq_len + 1), shuffle=False)
    return [int(t) for i in range(len(ds)) for t in ds[i]]


def _expected(tok, docs: list[str], directory, block: int = SEQ + 1) -> list[int]:
    """Documents joined by EOS, cut like the chunks of ``directory``; each chunk's tail shorter
    than a row is not streamed."""
    ids = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    dims = [c["dim"] for c in json.loads((Path(directory) / "index.json").read_text())["chunks"]]
    assert sum(dims) == len(ids), "tokens were lost while writing"
    out, start = [], 0
    for dim in dims:
        out += ids[start : start + dim // block * block]
        start += dim
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_tok):
    """Three files (jsonl, txt.gz, parquet) prepared once; documents kept for comparisons."""
    src = tmp_path_factory.mktemp("src")
    docs_a = list(demo_documents(40, seed=1))
    docs_b = list(demo_documents(1, seed=2))
    docs_c = list(demo_documents(15, seed=3))
    _write_jsonl(src / "a.jsonl", docs_a)
    with gzip.open(src / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(docs_b[0])
    files = [src / "a.jsonl", src / "b.txt.gz"]
    per_file = [docs_a, docs_b]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": docs_c}), src / "c.parquet", row_group_size=4)
        files.append(src / "c.parquet")
        per_file.append(docs_c)
    except ImportError:
        pass
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    # The parquet file uses another column name; give it its own run below, one field per run.
    manifest = prepare_corpus([str(f) for f in files[:2]], out, demo_tok, SEQ, chunk_blocks=4)
    return {"src": src, "out": out, "manifest": manifest, "files": files, "docs": per_file}


def test_round_trip_reproduces_token_stream(corpus, demo_tok):
    docs_a, docs_b = corpus["docs"][:2]
    # Files are read in sorted order; chunks are full rows except where a shard ends.
    got = _stream(corpus["out"])
    assert got == _expected(demo_tok, docs_a + docs_b, corpus["out"])
    assert len(got) > 0.9 * corpus["manifest"].num_tokens


def test_manifest_contents(corpus, demo_tok):
    m = Manifest.load(corpus["out"])
    assert m == corpus["manifest"]
    docs = corpus["docs"][0] + corpus["docs"][1]
    n_tokens = sum(len(demo_tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert (m.num_tokens, m.num_documents, m.seq_len, m.dtype) == (n_tokens, len(docs), SEQ, "uint16")
    assert m.tokenizer_fingerprint == tokenizer_fingerprint(demo_tok)
    assert [Path(f).name for f in m.source_files] == ["a.jsonl", "b.txt.gz"]
    assert m.num_blocks * (SEQ + 1) == len(_stream(corpus["out"]))
    verify_prepared(corpus["out"], full=True)


def test_parquet_and_text_field(corpus, demo_tok, tmp_path):
    pytest.importorskip("pyarrow")
    docs_c = corpus["docs"][2]
    with pytest.raises(ValueError, match=r"c\.parquet: no column 'text'"):
        prepare_corpus([str(corpus["src"] / "c.parquet")], tmp_path / "x", demo_tok, SEQ)
    assert not (tmp_path / "x").exists()
    # Four row groups become four shards, prepared by two workers; order is kept.
    assert len(make_shards([corpus["src"] / "c.parquet"])) == 4
    prepare_corpus([str(corpus["src"] / "c.parquet")], tmp_path / "c", demo_tok, SEQ, text_field="body", num_workers=2)
    assert _stream(tmp_path / "c") == _expected(demo_tok, docs_c, tmp_path / "c")


def test_sharded_jsonl_is_the_same_for_any_number_of_workers(tmp_path, demo_tok):
    # The shards of one file are prepared by several workers; the corpus must not depend on how many.
    docs = list(demo_documents(30, seed=4))
    src = _write_jsonl(tmp_path / "d.jsonl", docs)
    shard_bytes = src.stat().st_size // 5 + 1
    assert len(make_shards([src], shard_bytes)) == 5
    one = prepare_corpus([str(src)], tmp_path / "one", demo_tok, SEQ, chunk_blocks=4, shard_bytes=shard_bytes)
    three = prepare_corpus([str(src)], tmp_path / "three", demo_tok, SEQ, chunk_blocks=4, shard_bytes=shard_bytes,
                           num_workers=3)  # fmt: skip
    assert _stream(tmp_path / "three") == _stream(tmp_path / "one") == _expected(demo_tok, docs, tmp_path / "one")
    assert (three.num_tokens, three.num_documents, three.num_chunks) == (one.num_tokens, one.num_documents,
                                                                         one.num_chunks)  # fmt: skip


def test_jsonl_byte_ranges_cover_every_line_once(tmp_path):
    docs = [f"document {i} " + "x" * (i % 7) for i in range(200)]
    path = _write_jsonl(tmp_path / "d.jsonl", docs)
    shards = make_shards([path], shard_bytes=97)  # ranges cut lines in the middle
    assert len(shards) > 10
    assert [d for s in shards for d in read_documents(s)] == docs


def test_validate_rejects_other_tokenizer(corpus, gpt2_like_tok):
    m = Manifest.load(corpus["out"])
    with pytest.raises(ValueError, match=f"tokenizer mismatch for {corpus['out']}"):
        validate(m, gpt2_like_tok, corpus["out"])


def test_refuses_non_empty_output(corpus, demo_tok, tmp_path):
    before = sorted(os.listdir(corpus["out"]))
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        prepare_corpus([str(corpus["src"] / "a.jsonl")], corpus["out"], demo_tok, SEQ)
    assert sorted(os.listdir(corpus["out"])) == before


def test_failed_overwrite_keeps_existing(corpus, demo_tok, tmp_path):
    out = tmp_path / "keep"
    prepare_corpus([str(corpus["src"] / "a.jsonl")], out, demo_tok, SEQ)
    tokens = _stream(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + "{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        prepare_corpus([str(bad)], out, demo_tok, SEQ, overwrite=True)
    assert _stream(out) == tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "keep"]  # no partial leftovers
    # A successful overwrite replaces it.
    prepare_corpus([str(corpus["src"] / "b.txt.gz")], out, demo_tok, SEQ, overwrite=True)
    assert _stream(out) != tokens


def test_bad_inputs_name_the_file(tmp_path, demo_tok):
    with pytest.raises(ValueError, match="matches no file"):
        expand_inputs([str(tmp_path / "missing/*.jsonl")])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        expand_inputs([str(tmp_path / "empty.jsonl")])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported input file .*data\.csv"):
        expand_inputs([str(tmp_path / "data.csv")])
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(ValueError, match=r"binary\.txt is not valid UTF-8"):
        prepare_corpus([str(tmp_path / "binary.txt")], tmp_path / "o1", demo_tok, SEQ)
    _write_jsonl(tmp_path / "other.jsonl", ["hello"], field="content")
    with pytest.raises(ValueError, match=r"other\.jsonl:1: no 'text' field"):
        prepare_corpus([str(tmp_path / "other.jsonl")], tmp_path / "o2", demo_tok, SEQ)
    _write_jsonl(tmp_path / "blank.jsonl", ["", ""])
    with pytest.raises(ValueError, match="hold no text"):
        prepare_corpus([str(tmp_path / "blank.jsonl")], tmp_path / "o4", demo_tok, SEQ)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 definitely not parquet")
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match=r"cannot read Parquet file .*broken\.parquet"):
        prepare_corpus([str(tmp_path / "broken.parquet")], tmp_path / "o3", demo_tok, SEQ)
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 4))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial outputs left


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file(tmp_path):
    path = _write_jsonl(tmp_path / "secret.jsonl", ["x"])
    path.chmod(0)
    with pytest.raises(ValueError, match=r"secret\.jsonl is not readable"):
        expand_inputs([str(path)])


def test_corrupt_chunk_is_detected(corpus, demo_tok, tmp_path):
    out = tmp_path / "c"
    prepare_corpus([str(corpus["src"] / "a.jsonl")], out, demo_tok, SEQ, chunk_blocks=4)
    chunk = sorted(out.glob("chunk-*.bin"))[1]
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum sees it
    chunk.write_bytes(bytes(data))
    verify_prepared(out)
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt \\(checksum"):
        verify_prepared(out, full=True)
    chunk.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt: "):
        verify_prepared(out)
    chunk.unlink()
    with pytest.raises(ValueError, match=f"chunk {chunk} is missing"):
        verify_prepared(out)


def test_int32_for_large_vocab(gpt2_like_tok, tmp_path):
    from hydrahead_lit.data.prepare import token_dtype

    class Big:
        def get_vocab(self):
            return {"a": 0, "b": 70000}

    assert token_dtype(Big()) == np.int32
    assert token_dtype(gpt2_like_tok) == np.uint16


def test_unused_shard_fields_are_whole_file(tmp_path):
    path = _write_jsonl(tmp_path / "w.jsonl", ["one", "two"])
    assert list(read_documents(Shard(str(path), "jsonl"))) == ["one", "two"]
