"""Streaming training rows from prepared corpora, with synthetic retrieval rows mixed in.

:class:`TokenRows` is a ``litdata.StreamingDataset`` over ``seq_len + 1`` token rows. A row is
replaced by a synthetic retrieval sample when a hash of ``(seed, stream, epoch, index)`` falls
under ``synthetic_fraction``; the sample itself is seeded by the same hash. Rows are therefore
a pure function of the sample index, which is what LitData's loader state records, so a
resumed run sees exactly the rows an uninterrupted run would have seen. The loaders that
serve these rows to Lightning are in :mod:`hydrahead_lit.data.loaders`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from litdata import StreamingDataset, TokensLoader

from hydrahead_lit.data.haystack import Haystack
from hydrahead_lit.data.manifest import Manifest, validate
from hydrahead_lit.data.prepare import load_tokenizer, verify_prepared
from hydrahead_lit.data.synthetic import TASKS, make_sample

SYNTHETIC_HAYSTACKS = ("corpus", "procedural", "noise")
SYNTHETIC_LOSS = ("all", "answer")


def open_prepared(directory: str | Path, tokenizer, seq_len: int, sample_bytes: float = 0) -> Manifest:
    """Load, check and validate a prepared directory against ``tokenizer`` and ``seq_len``; the SHA-256
    and token ids of ``sample_bytes`` of its chunks (spread over the directory) are checked too."""
    manifest = verify_prepared(directory, sample_bytes=sample_bytes)
    validate(manifest, tokenizer, directory)
    if manifest.chunk_tokens < seq_len + 1:
        raise ValueError(
            f"{directory} was prepared with chunks of {manifest.chunk_tokens} tokens, fewer than one row of "
            f"seq_len + 1 = {seq_len + 1}; prepare it again with a larger --seq-len or --chunk-blocks"
        )
    return manifest


def _unit_hash(*parts: object) -> int:
    """A 64-bit integer from ``parts``, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ChunkReadError(RuntimeError):
    """A row could not be read from a prepared directory, or holds ids past the vocabulary (names the chunk)."""


class TokenRows(StreamingDataset):
    """Rows ``{"input_ids": int64 [seq_len+1], "loss_mask": bool [seq_len+1]}`` from one directory.

    A row that cannot be read, or that holds a token id of at least the manifest's ``vocab_size`` (a
    corrupt chunk), raises ``ChunkReadError`` naming the chunk file, before any model sees it.
    """

    def __init__(self, input_dir: str, seq_len: int, tokenizer: str, shuffle: bool = True, seed: int = 42,
                 stream: int = 0, synthetic_fraction: float = 0.0, synthetic_tasks: tuple[str, ...] = TASKS,
                 synthetic_haystack: str = "corpus", synthetic_loss: str = "all", drop_last: bool = True,
                 **kwargs) -> None:  # fmt: skip
        if not 0.0 <= synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
        unknown = [t for t in synthetic_tasks if t not in TASKS]
        if unknown or not synthetic_tasks:
            raise ValueError(f"synthetic_tasks {list(synthetic_tasks)} invalid; choose among {', '.join(TASKS)}")
        if synthetic_haystack not in SYNTHETIC_HAYSTACKS:
            raise ValueError(f"synthetic_haystack must be one of {SYNTHETIC_HAYSTACKS}, got {synthetic_haystack!r}")
        if synthetic_loss not in SYNTHETIC_LOSS:
            raise ValueError(f"synthetic_loss must be one of {SYNTHETIC_LOSS}, got {synthetic_loss!r}")
        super().__init__(
            str(input_dir), item_loader=TokensLoader(block_size=seq_len + 1), shuffle=shuffle, seed=seed,
            drop_last=drop_last, **kwargs,
        )  # fmt: skip
        self.seq_len = seq_len
        self.tokenizer_spec = tokenizer
        self.row_seed = seed
        self.stream = stream
        self.synthetic_fraction = synthetic_fraction
        self.synthetic_tasks = tuple(synthetic_tasks)
        self.synthetic_haystack = synthetic_haystack
        self.synthetic_loss = synthetic_loss
        self._tokenizer = None
        self.directory = Path(input_dir)
        index = json.loads((self.directory / "index.json").read_text())
        self.chunk_files = [c["filename"] for c in index["chunks"]]
        self._chunk_ends = np.cumsum([c["dim"] // (seq_len + 1) for c in index["chunks"]])
        self.vocab_size = Manifest.load(input_dir).vocab_size

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokenizer"] = None  # reloaded from its path in each worker
        return state

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    def synthetic_row(self, index: int, epoch: int, corpus_ids: list[int] | None = None) -> dict | None:
        """The synthetic row replacing row ``index`` of ``epoch``, or None if the row stays."""
        h = _unit_hash(self.row_seed, self.stream, epoch, index)
        if (h >> 11) / float(1 << 53) >= self.synthetic_fraction:
            return None
        task = self.synthetic_tasks[h % len(self.synthetic_tasks)]
        if self.synthetic_haystack == "corpus" and corpus_ids is not None:
            haystack = Haystack.from_token_ids(corpus_ids)
        elif self.synthetic_haystack == "noise":
            haystack = Haystack.noise()
        else:
            haystack = None  # the procedural default
        sample = make_sample(task, self.tokenizer, self.seq_len + 1, seed=h & 0x7FFFFFFF, haystack=haystack)
        mask = torch.ones(self.seq_len + 1, dtype=torch.bool)
        if self.synthetic_loss == "answer":  # targets are shifted by one: keep the answer tokens only
            mask.zero_()
            start, end = sample.answer_span
            mask[start:end] = True
        return {"input_ids": torch.tensor(sample.full_ids, dtype=torch.long), "loss_mask": mask}

    def chunk_file(self, index) -> Path:
        """The chunk file that row ``index`` (an int or LitData's ``ChunkedIndex``) is read from."""
        chunk = getattr(index, "chunk_index", None)
        if chunk is None:
            chunk = int(np.searchsorted(self._chunk_ends, int(index), side="right"))
        return self.directory / self.chunk_files[min(chunk, len(self.chunk_files) - 1)]

    def _corrupt(self, index, what: str) -> ChunkReadError:
        return ChunkReadError(f"{what} in chunk {self.chunk_file(index)}; check the directory with "
                              f"`python data/prepare.py --verify {self.directory}` and prepare it again")  # fmt: skip

    def __getitem__(self, index):
        try:
            item = super().__getitem__(index)
        except Exception as e:
            if isinstance(index, slice):
                raise
            raise self._corrupt(index, f"reading row {int(getattr(index, 'index', index))} failed "
                                       f"({type(e).__name__}: {e})") from e  # fmt: skip
        if isinstance(index, slice):
            return item
        ids = torch.from_numpy(np.asarray(item).astype(np.int64))
        if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < self.vocab_size:
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise self._corrupt(index, f"token id {bad} of row {int(getattr(index, 'index', index))} is outside "
                                       f"the vocabulary (0..{self.vocab_size - 1})")  # fmt: skip
        if self.synthetic_fraction > 0:
            i = int(getattr(index, "index", index))
            row = self.synthetic_row(i, int(self.current_epoch), ids.tolist())
            if row is not None:
                return row
        return {"input_ids": ids, "loss_mask": torch.ones(len(ids), dtype=torch.bool)}
