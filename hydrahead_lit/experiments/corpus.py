"""Corpora for experiments, prepared with the teacher's own tokenizer into LitData chunks.

* ``demo``: the procedural demo documents (an English-like grammar; what the demo teacher learned).
* ``python``: real text available offline on any machine with Python: the source files and
  documentation (``.py``, ``.md``, ``.rst``, ``.txt``) of the standard library and the installed
  packages. Files are taken in an order fixed by a hash of their path below its root, up to a byte
  budget; the files whose hash is 0 mod ``VAL_EVERY`` are held out, up to 1/``VAL_EVERY`` of it. What
  is taken depends on what is installed, so roots, files and bytes are recorded next to the data.
* user files (``--data`` / ``--val-data``): anything ``data/prepare.py`` reads (.txt/.md, .jsonl,
  .parquet, optionally gzipped), train and held-out given separately.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CORPORA = ("demo", "python")
SOURCE_SUFFIXES = (".py", ".md", ".rst", ".txt")
MAX_FILE_BYTES = 256 << 10  # larger files are mostly generated (tables, vendored bundles)
VAL_EVERY = 50
SKIP_DIRS = {"__pycache__", ".git", "node_modules"}


def _roots(exclude: Path | None) -> list[Path]:
    """The standard library and every directory on sys.path (site-packages, PYTHONPATH targets), except the
    working directory and `exclude` with everything below it but the Python environment."""
    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["purelib"], paths["platlib"], *sys.path]
    roots: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    env = Path(sys.prefix).resolve()  # a virtual environment inside the excluded tree still counts
    for c in candidates:
        p = Path(c or ".").resolve()
        excluded = skip is not None and (p == skip or (skip in p.parents and env not in (p, *p.parents)))
        if not p.is_dir() or p == Path.cwd().resolve() or excluded:
            continue  # the excluded tree (the project's checkout) with any folder of it on sys.path
        if any(p == r or r in p.parents for r in roots):
            continue
        roots = [r for r in roots if p not in r.parents] + [p]  # a parent replaces its children
    return sorted(roots)


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SOURCE_SUFFIXES):
                path = Path(dirpath) / name
                yield path.relative_to(root).as_posix(), path


def _key(rel: str) -> int:
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big")


def write_python_corpus(out_dir: Path, max_bytes: int, exclude: Path | None = None) -> dict[str, Any]:
    """`out_dir/train.jsonl` and `out_dir/val.jsonl` (one document per file) and `out_dir/sources.json`."""
    if max_bytes < 1:
        raise ValueError(f"the corpus byte budget must be positive, got {max_bytes}")
    roots = _roots(exclude)
    entries = []
    for root in roots:
        for rel, path in _files(root):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if 0 < size <= MAX_FILE_BYTES and not path.is_symlink():
                entries.append((_key(rel), rel, path))
    entries.sort()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Held out: the files whose hash is 0 mod VAL_EVERY, up to 1/VAL_EVERY of the budget; the rest train.
    room = {"val": max(1, max_bytes // VAL_EVERY)}
    room["train"] = max_bytes - room["val"]
    counts = {"train": [0, 0], "val": [0, 0]}  # files, bytes
    with (out_dir / "train.jsonl").open("w") as train, (out_dir / "val.jsonl").open("w") as val:
        for key, rel, path in entries:
            split = "val" if key % VAL_EVERY == 0 else "train"
            if counts[split][1] >= room[split]:
                if all(counts[s][1] >= room[s] for s in room):
                    break
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if not text.strip():
                continue
            (val if split == "val" else train).write(json.dumps({"text": text, "path": rel}) + "\n")
            counts[split][0] += 1
            counts[split][1] += len(text.encode())
    if counts["train"][0] == 0 or counts["val"][0] == 0:
        raise ValueError(
            f"the Python corpus found too few files under {[str(r) for r in roots]} (train "
            f"{counts['train'][0]}, held-out {counts['val'][0]}); raise --corpus-mb or give --data"
        )
    record = {"roots": [str(r) for r in roots], "candidates": len(entries), "max_bytes": max_bytes,
              **{f"{s}_{k}": counts[s][i] for s in counts for i, k in enumerate(("files", "bytes"))}}  # fmt: skip
    (out_dir / "sources.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def prepare_splits(
    data_dir: Path, corpus: str, tokenizer: str | Path, seq_len: int, corpus_bytes: int = 64 << 20,
    demo_docs: tuple[int, int] = (60000, 500), data: list[str] | None = None, val_data: list[str] | None = None,
    exclude: Path | None = None, num_workers: int = 1,
) -> tuple[Path, Path]:  # fmt: skip
    """`data_dir/train` and `data_dir/val` prepared with `tokenizer` (kept when already complete)."""
    from hydrahead_lit.data.prepare import prepare_corpus, verify_prepared

    targets = (data_dir / "train", data_dir / "val")
    try:
        for t in targets:
            verify_prepared(t)
        return targets
    except ValueError:
        pass
    if data:
        if not val_data:
            raise ValueError("--data needs --val-data: held-out files for perplexity, validation and the haystack")
        inputs = (list(data), list(val_data))
    elif corpus == "demo":
        from hydrahead_lit.data.demo import write_demo_corpus

        inputs = ([], [])
        for i, (split, n_docs, seed) in enumerate((("train", demo_docs[0], 1), ("val", demo_docs[1], 2))):
            src = data_dir / f"{split}.src"
            write_demo_corpus(src, n_docs, seed=seed)
            inputs[i].append(str(src))
    elif corpus == "python":
        src = data_dir / "python.src"
        write_python_corpus(src, corpus_bytes, exclude)
        inputs = ([str(src / "train.jsonl")], [str(src / "val.jsonl")])
    else:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {CORPORA} or give --data")
    for target, files in zip(targets, inputs):
        prepare_corpus(files, target, str(tokenizer), seq_len, chunk_blocks=64, overwrite=True,
                       num_workers=num_workers)  # fmt: skip
    return targets
