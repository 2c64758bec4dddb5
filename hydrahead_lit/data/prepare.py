"""Tokenize a corpus into LitData token chunks for streaming (``data/prepare.py`` is the CLI).

Layout: a worker cuts its stream of documents (joined by EOS) into items of exactly
``chunk_blocks * (seq_len + 1)`` tokens, one item per chunk, so ``TokensLoader(block_size=seq_len + 1)``
reads every token of those chunks. Only chunks holding the last tokens of a shard are shorter,
and their final < seq_len + 1 tokens are not read: at most one row per shard is lost.
The result is written to a fresh sibling directory and moved into place at the end, so a
failed run never leaves a half-written corpus and never touches an existing one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from hydrahead_lit.data.manifest import Manifest, tokenizer_fingerprint
from hydrahead_lit.data.sources import SHARD_BYTES, Shard, expand_inputs, file_kind, make_shards, read_documents

DEFAULT_CHUNK_BLOCKS = 256  # 256 x 4097 tokens ~ 4 MB (int32) per chunk at seq_len 4096


def load_tokenizer(tokenizer):
    """A tokenizer object from an object, a local directory, a GGUF file or ``"demo"`` (the bundled one)."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if str(tokenizer) == "demo":
        from hydrahead_lit.data.demo import demo_tokenizer

        return demo_tokenizer()
    from hydrahead_lit.teachers import is_gguf, load_teacher_tokenizer

    if is_gguf(tokenizer):  # a GGUF teacher file describes its tokenizer
        return load_teacher_tokenizer(tokenizer)
    path = Path(tokenizer).expanduser()
    if not path.is_dir():
        raise ValueError(f"tokenizer {tokenizer!r} is not a local directory (nothing is downloaded); "
                         "pass the teacher's model directory, its .gguf file, or 'demo'")  # fmt: skip
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def token_dtype(tokenizer) -> np.dtype:
    """uint16 when every id fits (halves disk and I/O), else int32."""
    return np.dtype(np.uint16) if max(tokenizer.get_vocab().values()) < 2**16 else np.dtype(np.int32)


class _TokenizeShard:
    """The ``optimize`` worker function: yields whole chunks of EOS-joined document tokens."""

    def __init__(self, tokenizer, text_field: str, chunk_tokens: int, dtype: np.dtype, stats_dir: str,
                 batch_docs: int = 64) -> None:  # fmt: skip
        self.tokenizer = tokenizer
        self.text_field = text_field
        self.chunk_tokens = chunk_tokens
        self.dtype = dtype
        self.stats_dir = stats_dir
        self.batch_docs = batch_docs

    def _encode(self, docs: list[str]) -> list[list[int]]:
        return self.tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []

    def __call__(self, shard: Shard):
        # A raising worker leaves litdata's helper processes orphaned (blocked forever on a pipe),
        # so errors are recorded for the parent instead, and later shards are skipped.
        if any(Path(self.stats_dir).glob("*.error")):
            return
        try:
            yield from self._run(shard)
        except Exception as e:
            key = hashlib.sha1(shard.name.encode()).hexdigest()
            Path(self.stats_dir, f"{key}.error").write_text(f"{type(e).__name__}: {e}")

    def _run(self, shard: Shard):
        eos = self.tokenizer.eos_token_id
        buf = np.empty(self.chunk_tokens, dtype=self.dtype)
        fill = n_tokens = n_docs = 0
        pending: list[str] = []

        def flush(docs: list[str]):
            nonlocal fill, n_tokens, n_docs
            for ids in self._encode(docs):
                ids = np.asarray(ids + [eos], dtype=self.dtype)
                n_tokens += len(ids)
                n_docs += 1
                while len(ids):
                    take = min(len(ids), self.chunk_tokens - fill)
                    buf[fill : fill + take] = ids[:take]
                    fill += take
                    ids = ids[take:]
                    if fill == self.chunk_tokens:
                        yield buf.copy()
                        fill = 0

        for doc in read_documents(shard, self.text_field):
            pending.append(doc)
            if len(pending) == self.batch_docs:
                yield from flush(pending)
                pending = []
        yield from flush(pending)
        if fill:
            yield buf[:fill].copy()
        key = hashlib.sha1(shard.name.encode()).hexdigest()
        stats = {"shard": shard.name, "tokens": n_tokens, "documents": n_docs}
        Path(self.stats_dir, f"{key}.json").write_text(json.dumps(stats))


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"output {output} is not empty; pass --overwrite (overwrite=True) to replace it")


def prepare_corpus(inputs: list[str] | str, output_dir: str | Path, tokenizer, seq_len: int,
                   text_field: str = "text", num_workers: int = 1, overwrite: bool = False,
                   chunk_blocks: int = DEFAULT_CHUNK_BLOCKS, shard_bytes: int = SHARD_BYTES,
                   start_method: str | None = None) -> Manifest:  # fmt: skip
    """Tokenize ``inputs`` (paths/dirs/globs of .txt/.jsonl/.parquet, optionally .gz) into ``output_dir``.

    ``tokenizer`` is a tokenizer object, a local directory or ``"demo"``. Returns the written
    :class:`Manifest`. Raises ValueError before doing any work for bad inputs or a non-empty
    output (unless ``overwrite``); an existing output is replaced only after success. Workers
    are forked on Linux (``start_method=None``): spawning re-imports torch in every worker.
    """
    from litdata import TokensLoader, optimize

    if seq_len < 1 or chunk_blocks < 1 or num_workers < 1:
        raise ValueError(f"need seq_len, chunk_blocks, num_workers >= 1 (got {seq_len}, {chunk_blocks}, {num_workers})")
    output = Path(output_dir).expanduser().resolve()
    _check_output(output, overwrite)
    files = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer)
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents could not be separated")
    for f in files:  # fail fast on a wrong text field or a broken file before starting workers
        if file_kind(f) != "text":  # (a text file is one document: reading it here would double the work)
            next(read_documents(Shard(str(f), file_kind(f)), text_field), None)
    shards = make_shards(files, shard_bytes)
    if start_method is None:
        start_method = "fork" if sys.platform.startswith("linux") else "spawn"
    block = seq_len + 1
    chunk_tokens = chunk_blocks * block
    dtype = token_dtype(tok)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    staging = work / "out"  # litdata needs a directory that does not exist yet
    stats_dir = work / "stats"
    stats_dir.mkdir()
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        # One process per worker already; and the Rust thread pool must not cross a fork.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        fn = _TokenizeShard(tok, text_field, chunk_tokens, dtype, str(stats_dir))
        optimize(fn=fn, inputs=shards, output_dir=str(staging), chunk_size=chunk_tokens, item_loader=TokensLoader(),
                 num_workers=min(num_workers, len(shards)), keep_data_ordered=True, reorder_files=False,
                 mode=None, start_method=start_method)  # fmt: skip
        errors = sorted(p.read_text() for p in stats_dir.glob("*.error"))
        if errors:
            raise ValueError(f"preparation failed, nothing was written to {output}: {errors[0]}")
        stats = [json.loads(p.read_text()) for p in stats_dir.glob("*.json")]
        if len(stats) != len(shards):
            raise ValueError(f"preparation failed: {len(shards) - len(stats)} of {len(shards)} shards did not finish")
        if sum(s["tokens"] for s in stats) == 0:
            raise ValueError(f"inputs {inputs} hold no text (every document is empty)")
        index = json.loads((staging / "index.json").read_text())
        manifest = Manifest(
            seq_len=seq_len,
            chunk_blocks=chunk_blocks,
            num_tokens=sum(s["tokens"] for s in stats),
            num_documents=sum(s["documents"] for s in stats),
            num_chunks=len(index["chunks"]),
            num_blocks=sum(c["dim"] // block for c in index["chunks"]),
            dtype=dtype.name,
            tokenizer_name=str(getattr(tok, "name_or_path", "") or tokenizer),
            tokenizer_fingerprint=tokenizer_fingerprint(tok),
            vocab_size=len(tok),
            eos_token_id=tok.eos_token_id,
            text_field=text_field,
            source_files=[str(f) for f in files],
        )
        manifest.chunk_sha256 = {c["filename"]: _sha256(staging / c["filename"]) for c in index["chunks"]}
        manifest.save(staging)
        _replace(staging, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    return manifest


def _replace(staging: Path, output: Path) -> None:
    """Move ``staging`` to ``output``; an existing ``output`` is removed only once the move is possible."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
    try:
        staging.rename(output)
    except OSError:
        if old is not None:
            old.rename(output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_ids(path: Path, chunk: dict, dtype: np.dtype) -> np.ndarray:
    """The token ids of a chunk file: its last ``dim`` items (LitData writes a small header first)."""
    n = int(chunk["dim"])
    raw = path.read_bytes()
    return np.frombuffer(raw[len(raw) - n * dtype.itemsize :], dtype=dtype)


def sample_chunks(chunks: list[dict], budget_bytes: float) -> list[int]:
    """Indices of the chunks a sampled check reads: every chunk when they fit in ``budget_bytes``, else
    evenly spread ones (the first and the last among them) that do; none for a zero budget."""
    if budget_bytes <= 0 or not chunks:
        return []
    total = sum(int(c["chunk_bytes"]) for c in chunks)
    if total <= budget_bytes:
        return list(range(len(chunks)))
    k = max(1, int(budget_bytes // (total / len(chunks))))
    return sorted({round(i * (len(chunks) - 1) / max(1, k - 1)) for i in range(k)})


def verify_prepared(directory: str | Path, full: bool = False, sample_bytes: float = 0) -> Manifest:
    """Check a prepared directory: manifest, index, every chunk present with the right size, and the
    SHA-256 and token ids (``< vocab_size``) of every chunk (``full``) or of an evenly spread sample of
    ``sample_bytes`` of them. ValueError naming the bad file otherwise."""
    d = Path(directory)
    manifest = Manifest.load(d)
    index_path = d / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_path} is missing or corrupt ({e}); prepare {d} again") from e
    chunks = index.get("chunks", [])
    if not chunks:
        raise ValueError(f"{d} holds no chunks; prepare it again")
    for chunk in chunks:
        path = d / chunk["filename"]
        if not path.is_file():
            raise ValueError(f"chunk {path} is missing; prepare {d} again")
        if path.stat().st_size != chunk["chunk_bytes"]:
            raise ValueError(
                f"chunk {path} is corrupt: {path.stat().st_size} bytes, index says {chunk['chunk_bytes']}; "
                f"prepare {d} again"
            )
    checked = range(len(chunks)) if full else sample_chunks(chunks, sample_bytes)
    dtype = np.dtype(manifest.dtype)
    for i in checked:
        chunk = chunks[i]
        path = d / chunk["filename"]
        expected = manifest.chunk_sha256.get(chunk["filename"])
        if expected is not None and _sha256(path) != expected:
            raise ValueError(f"chunk {path} is corrupt (checksum mismatch with the manifest); prepare {d} again")
        top = int(_chunk_ids(path, chunk, dtype).max(initial=0))
        if top >= manifest.vocab_size:
            raise ValueError(
                f"chunk {path} is corrupt: it holds token id {top}, past the tokenizer's {manifest.vocab_size} "
                f"tokens; prepare {d} again"
            )
    return manifest
