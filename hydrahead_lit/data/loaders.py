"""Resumable loaders for Lightning's fit loop: one prepared directory, or a weighted mixture.

Lightning stores ``loader.state_dict()`` in checkpoints and calls ``load_state_dict`` on resume.
Two interactions with LitData need care, both covered by ``tests/data/test_datamodule.py``:

* Lightning stops pulling batches once it has ``len(loader)`` of them, so a LitData iteration
  that resumed from a checkpoint never runs to exhaustion, and LitData would replay the loaded
  state in the next epoch (:class:`RowLoader` ends it).
* LitData's ``CombinedStreamingDataset`` restores each dataset from its total sample count, but
  with several workers each worker has drawn a different number of rows from each dataset, so
  a resumed mixture diverges. :class:`MixtureLoader` instead keeps one loader per directory and
  picks the directory of every row with a stateless hash, so its state is exact.
"""

from __future__ import annotations

import hashlib

import torch
from litdata import StreamingDataLoader

from hydrahead_lit.data.streaming import TokenRows


class RowLoader(StreamingDataLoader):
    """``StreamingDataLoader`` that starts a fresh epoch after a resumed one, and with
    ``drop_last`` never yields a short batch."""

    def __init__(self, dataset: TokenRows, batch_size: int, drop_last: bool = False, **kwargs) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs)
        self.drop_short = drop_last
        self._resumed_batches = 0

    def load_state_dict(self, obj: dict) -> None:
        super().load_state_dict(obj)
        self._resumed_batches = 0

    def __iter__(self):
        if self.restore and self._resumed_batches > 0:
            self.restore = False  # the resumed epoch was consumed: start the next one normally
        for batch in super().__iter__():
            if self.drop_short and len(batch["input_ids"]) < self.batch_size:
                return
            if self.restore:
                self._resumed_batches += 1
            yield batch


def _unit(*parts: object) -> float:
    """A number in [0, 1) from ``parts``, stable across processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


class MixtureLoader:
    """Batches whose rows come from several :class:`TokenRows` with the given weights.

    The directory of row ``r`` of epoch ``e`` is drawn from a hash of ``(seed, e, r)``. An epoch
    has ``len(self)`` batches, or fewer if a directory runs out first (so the weights hold
    throughout). Each directory is read by its own :class:`RowLoader` with ``num_workers``
    workers, one row at a time.
    """

    def __init__(self, datasets: list[TokenRows], weights: list[float] | None, batch_size: int,
                 num_workers: int = 0, seed: int = 42, pin_memory: bool = False) -> None:  # fmt: skip
        if weights is None:  # like LitData: proportional to the directory sizes
            weights = [float(len(d)) for d in datasets]
        total = float(sum(weights))
        self.cumulative = [sum(weights[: i + 1]) / total for i in range(len(weights))]
        self.weights = [w / total for w in weights]
        self.batch_size = batch_size
        self.seed = seed
        self.loaders = [
            RowLoader(d, batch_size=1, num_workers=num_workers, pin_memory=pin_memory) for d in datasets
        ]  # fmt: skip
        self._epoch = 0
        self._row = 0
        self._restored = False
        # Whether each directory has yielded a row this epoch: LitData starts a loader's epoch
        # lazily, at its first row, so until then its state still describes the previous epoch.
        self._started = [False] * len(datasets)

    def __len__(self) -> int:
        # Lightning pre-fetches a batch from loaders without a length, which would make the state
        # count a batch that was not trained on. 90% of the expected rows before the first
        # directory runs out; an earlier end simply ends the epoch.
        expected = min(len(loader) / w for loader, w in zip(self.loaders, self.weights))
        return max(1, int(0.9 * expected) // self.batch_size)

    def _source(self, row: int) -> int:
        u = _unit(self.seed, self._epoch, row)
        return next((i for i, c in enumerate(self.cumulative) if u < c), len(self.cumulative) - 1)

    def __iter__(self):
        if self._restored:
            self._restored = False
        else:
            self._epoch += 1
            self._row = 0
            self._started = [False] * len(self.loaders)
            for loader in self.loaders:  # every directory starts the new epoch afresh
                loader.restore = False
        iterators = [iter(loader) for loader in self.loaders]
        end = len(self) * self.batch_size  # the epoch has exactly len(self) batches, or fewer
        while self._row < end:
            rows = []
            for r in range(self._row, self._row + self.batch_size):
                source = self._source(r)
                try:
                    rows.append(next(iterators[source]))
                    self._started[source] = True
                except StopIteration:
                    return  # a directory ran out: the epoch ends (the partial batch is dropped)
            self._row += self.batch_size
            yield {key: torch.cat([row[key] for row in rows]) for key in rows[0]}

    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "row": self._row,
            "started": list(self._started),
            "loaders": [loader.state_dict() for loader in self.loaders],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["loaders"]) != len(self.loaders):
            raise ValueError(
                f"checkpoint has a mixture of {len(state['loaders'])} directories, this run has {len(self.loaders)}"
            )
        self._epoch, self._row, self._started = state["epoch"], state["row"], list(state["started"])
        for loader, sub, started in zip(self.loaders, state["loaders"], self._started):
            loader.load_state_dict(sub)  # restores its epoch counter and position
            if not started:
                loader.restore = False  # it had not begun this epoch yet: begin it afresh
        self._restored = True
