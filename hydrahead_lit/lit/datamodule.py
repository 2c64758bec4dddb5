"""LightningDataModule streaming prepared token corpora (LitData), resumable mid-epoch.

Batches are ``{"input_ids": LongTensor [B, seq_len + 1], "loss_mask": BoolTensor [B, seq_len + 1]}``;
the LightningModule shifts them for next-token prediction. ``loss_mask`` is all True for corpus
rows (and for synthetic rows unless ``synthetic_loss="answer"``).

The train loader (a LitData ``StreamingDataLoader``, or one per directory for a mixture) has a
``state_dict``: Lightning stores it in every checkpoint and restores it on ``fit(ckpt_path=...)``,
so training resumes at the next unseen batch (see :mod:`hydrahead_lit.data.loaders`). Keep
``seed``, ``batch_size``, ``num_workers``, the directories and the world size unchanged across
a resume.
"""

from __future__ import annotations

import warnings

from lightning.pytorch import LightningDataModule

from hydrahead_lit.data.loaders import MixtureLoader, RowLoader
from hydrahead_lit.data.prepare import load_tokenizer
from hydrahead_lit.data.streaming import TokenRows, open_prepared
from hydrahead_lit.data.synthetic import make_sample

# The loaders define __len__ on purpose (Lightning needs the epoch length to resume exactly, see
# data/loaders.py); Lightning's generic caution about iterable datasets with a length does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

DEFAULT_SYNTHETIC_TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "mqar", "variable_tracking")


class TokenDataModule(LightningDataModule):
    """Stream ``seq_len + 1`` token rows from one or more prepared directories.

    Args:
        data_dirs: prepared directory, or several (mixed by ``weights``).
        tokenizer: local tokenizer directory (the teacher's) or ``"demo"``; every directory's
            manifest must match it.
        seq_len: tokens per training row, plus one for the shifted target.
        batch_size: rows per batch (per device).
        num_workers: loader worker processes.
        weights: sampling weights of ``data_dirs`` (default: proportional to their sizes).
        val_dir: prepared directory for validation (read in order, no synthetic rows).
        synthetic_fraction: share of training rows replaced by synthetic retrieval samples.
        synthetic_tasks: tasks drawn for those rows (see ``hydrahead_lit.data.synthetic.TASKS``).
        synthetic_haystack: filler of synthetic rows: ``"corpus"`` (the replaced row's own
            text), ``"procedural"`` or ``"noise"``.
        synthetic_loss: ``"all"`` tokens of a synthetic row, or only its ``"answer"``.
        seed: shuffling and synthetic-row seed.
        shuffle: shuffle training rows.
        pin_memory: pin host memory of batches (useful on GPU).
        verify_mb: megabytes of chunks, spread over each directory, whose SHA-256 and token ids are
            checked at setup (all chunks of a smaller directory; 0: sizes only). Every row read later is
            checked against the vocabulary too, and a bad one names its chunk file.
    """

    def __init__(
        self,
        data_dirs: list[str] | str,
        tokenizer: str = "demo",
        seq_len: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        weights: list[float] | None = None,
        val_dir: str | None = None,
        synthetic_fraction: float = 0.0,
        synthetic_tasks: list[str] | None = None,
        synthetic_haystack: str = "corpus",
        synthetic_loss: str = "all",
        seed: int = 42,
        shuffle: bool = True,
        pin_memory: bool = False,
        verify_mb: float = 256.0,
    ) -> None:
        super().__init__()
        self.data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
        if not self.data_dirs:
            raise ValueError("data_dirs is empty: give at least one prepared directory")
        if weights is not None and (len(weights) != len(self.data_dirs) or min(weights) <= 0):
            raise ValueError(
                f"weights {weights} must be {len(self.data_dirs)} positive numbers, one per data_dirs entry"
            )
        if seq_len < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need seq_len, batch_size >= 1 and num_workers >= 0 (got {seq_len}, {batch_size}, {num_workers})"
            )
        self.tokenizer_spec = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.weights = None if weights is None else [float(w) for w in weights]
        self.val_dir = val_dir
        self.synthetic_fraction = synthetic_fraction
        self.synthetic_tasks = tuple(synthetic_tasks or DEFAULT_SYNTHETIC_TASKS)
        self.synthetic_haystack = synthetic_haystack
        self.synthetic_loss = synthetic_loss
        self.seed = seed
        self.shuffle = shuffle
        self.pin_memory = pin_memory
        self.verify_mb = verify_mb
        self._tokenizer = None
        self.manifests: dict[str, object] = {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids (for ``link_arguments(..., apply_on="instantiate")``)."""
        return len(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        dirs = self.data_dirs + ([self.val_dir] if self.val_dir else [])
        for d in dirs:
            self.manifests[d] = open_prepared(d, self.tokenizer, self.seq_len, sample_bytes=self.verify_mb * 2**20)
        if self.synthetic_fraction > 0:  # a task that cannot fit seq_len + 1 fails now, not mid-run
            for task in self.synthetic_tasks:
                try:
                    make_sample(task, self.tokenizer, self.seq_len + 1, seed=0)
                except ValueError as e:
                    raise ValueError(
                        f"synthetic task {task!r} does not fit seq_len={self.seq_len}: {e}; "
                        "raise seq_len or remove the task from synthetic_tasks"
                    ) from e

    def _rows(self, directory: str, stream: int, train: bool) -> TokenRows:
        return TokenRows(
            directory,
            self.seq_len,
            self.tokenizer_spec,
            shuffle=self.shuffle and train,
            seed=self.seed,
            stream=stream,
            synthetic_fraction=self.synthetic_fraction if train else 0.0,
            synthetic_tasks=self.synthetic_tasks,
            synthetic_haystack=self.synthetic_haystack,
            synthetic_loss=self.synthetic_loss,
            drop_last=train,
        )

    def train_dataloader(self):
        datasets = [self._rows(d, i, train=True) for i, d in enumerate(self.data_dirs)]
        if len(datasets) == 1:
            return RowLoader(datasets[0], batch_size=self.batch_size, num_workers=self.num_workers,
                             pin_memory=self.pin_memory, drop_last=True)  # fmt: skip
        return MixtureLoader(datasets, self.weights, self.batch_size, num_workers=self.num_workers, seed=self.seed,
                             pin_memory=self.pin_memory)  # fmt: skip

    def val_dataloader(self):
        if not self.val_dir:
            return []
        return RowLoader(
            self._rows(self.val_dir, 0, train=False),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
