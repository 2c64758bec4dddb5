"""Input discovery and document readers for corpus preparation (text, JSONL, Parquet).

Large uncompressed JSONL files are cut into line-aligned byte ranges and Parquet files into
row groups, so that preparation parallelizes over workers even when a corpus is a few huge
files. Every error names the file (and line) it comes from.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = (
    *TEXT_SUFFIXES,
    *JSONL_SUFFIXES,
    *PARQUET_SUFFIXES,
    *(s + ".gz" for s in TEXT_SUFFIXES + JSONL_SUFFIXES),
)


def file_kind(path: str | Path) -> str:
    """``"text"``, ``"jsonl"`` or ``"parquet"`` from the suffix; ValueError for anything else."""
    name = str(path).lower().removesuffix(".gz")
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES) and not str(path).lower().endswith(".gz"):
        return "parquet"
    raise ValueError(f"unsupported input file {path}: expected one of {', '.join(SUPPORTED)}")


def expand_inputs(patterns: list[str] | str) -> list[Path]:
    """Resolve paths, directories (searched recursively) and globs (``**`` allowed) to sorted files.

    Raises ValueError naming the pattern that matched nothing, and the first file that is
    empty, unreadable or of an unsupported type.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no inputs given: pass files, directories or globs such as 'corpus/**/*.jsonl'")
    files: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file() and str(p).lower().endswith(SUPPORTED)]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        if not found:
            raise ValueError(f"input {pattern!r} matches no file (supported: {', '.join(SUPPORTED)})")
        files.update(p.resolve() for p in found)
    out = sorted(files)
    for p in out:
        file_kind(p)
        if not os.access(p, os.R_OK):
            raise ValueError(f"input file {p} is not readable (check its permissions)")
        if p.stat().st_size == 0:
            raise ValueError(f"input file {p} is empty")
    return out


@dataclass(frozen=True)
class Shard:
    """A unit of preparation work: a whole file, a byte range of a JSONL file or a Parquet row group."""

    path: str
    kind: str
    start: int = 0
    end: int = -1  # bytes for JSONL ranges, row group index + 1 for Parquet; -1: whole file

    @property
    def name(self) -> str:
        return self.path if self.end < 0 else f"{self.path}[{self.start}:{self.end}]"


# A JSONL file is cut into byte ranges of this size, the units of parallel tokenization: small enough that
# a corpus of a few tens of MiB gives every worker a shard (64 MiB left 8 workers with 2 shards), large
# enough that the short chunk each shard ends with is a negligible share of the rows. The cut depends on
# the file's size only, so the prepared corpus is the same for any number of workers.
SHARD_BYTES = 8 << 20


def make_shards(files: list[Path], shard_bytes: int = SHARD_BYTES) -> list[Shard]:
    """Split ``files`` into shards of about ``shard_bytes`` (JSONL) or one row group (Parquet)."""
    shards: list[Shard] = []
    for p in files:
        kind = file_kind(p)
        size = p.stat().st_size
        if kind == "jsonl" and not p.name.lower().endswith(".gz") and size > shard_bytes:
            shards += [Shard(str(p), kind, s, min(s + shard_bytes, size)) for s in range(0, size, shard_bytes)]
        elif kind == "parquet":
            groups = _parquet_file(p).num_row_groups
            shards += [Shard(str(p), kind, g, g + 1) for g in range(groups)] if groups > 1 else [Shard(str(p), kind)]
        else:
            shards.append(Shard(str(p), kind))
    return shards


def _open_text(path: str) -> io.TextIOBase:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _parquet_file(path: str | Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    try:
        return pq.ParquetFile(str(path))
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ValueError(f"cannot read Parquet file {path}: {e}") from e


def _jsonl_lines(shard: Shard) -> Iterator[tuple[int | None, str]]:
    """(line number or None for ranges, line) of the lines that *start* inside the shard's range."""
    if shard.end < 0:
        with _open_text(shard.path) as f:
            yield from enumerate(f, start=1)
        return
    with open(shard.path, "rb") as f:
        if shard.start > 0:  # the line straddling the range start belongs to the previous range
            f.seek(shard.start - 1)
            f.readline()
        while f.tell() < shard.end:
            line = f.readline()
            if not line:
                break
            yield None, line.decode("utf-8")


def read_documents(shard: Shard, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of ``shard``: a text file is one document, JSONL one per line."""
    try:
        if shard.kind == "text":
            with _open_text(shard.path) as f:
                text = f.read()
            if text.strip():
                yield text
        elif shard.kind == "jsonl":
            yield from _jsonl_documents(shard, text_field)
        else:
            yield from _parquet_documents(shard, text_field)
    except UnicodeDecodeError as e:
        raise ValueError(f"{shard.name} is not valid UTF-8 text ({e})") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {shard.name}: {e}") from e


def _jsonl_documents(shard: Shard, text_field: str) -> Iterator[str]:
    for lineno, line in _jsonl_lines(shard):
        if not line.strip():
            continue
        where = f"{shard.path}:{lineno}" if lineno is not None else shard.name
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e})") from e
        if not isinstance(record, dict) or text_field not in record:
            raise ValueError(f"{where}: no {text_field!r} field (set the text field with --text-field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
        if text:
            yield text


def _parquet_documents(shard: Shard, text_field: str) -> Iterator[str]:
    pf = _parquet_file(shard.path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"{shard.path}: no column {text_field!r} (columns: {pf.schema_arrow.names}); set --text-field")
    groups = range(pf.num_row_groups) if shard.end < 0 else range(shard.start, shard.end)
    for g in groups:
        for text in pf.read_row_group(g, columns=[text_field]).column(0).to_pylist():
            if text:
                yield text
