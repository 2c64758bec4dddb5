"""The evaluation set as Lightning data: one item per job (a RULER cell, perplexity, an efficiency length).

Samples themselves are built inside the job (they need the evaluated model's tokenizer), so an item is
a small dict such as ``{"kind": "ruler", "task": "niah_single", "length": 4096}``. The test loop
then walks the jobs in a fixed order, one ``test_step`` each.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset


def eval_jobs(
    tasks: list[str], lengths: list[int], held_out: bool, efficiency_lengths: list[int]
) -> list[dict[str, Any]]:
    """Jobs in run order: every task at every length, then perplexity, then efficiency per length."""
    jobs: list[dict[str, Any]] = [{"kind": "ruler", "task": t, "length": n} for t in tasks for n in lengths]
    if held_out:
        jobs.append({"kind": "perplexity", "task": "", "length": 0})
    jobs += [{"kind": "efficiency", "task": "", "length": n} for n in efficiency_lengths]
    return jobs


class EvalJobs(Dataset):
    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = list(jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.jobs[i])


def jobs_loader(jobs: list[dict[str, Any]]) -> DataLoader:
    """Unbatched loader (``batch_size=None``): ``test_step`` receives one job dict at a time."""
    return DataLoader(EvalJobs(jobs), batch_size=None, shuffle=False, num_workers=0)


class EvalDataModule(pl.LightningDataModule):
    """DataModule for the synthetic evaluation set of the :class:`~hydrahead_lit.eval.module.EvalModule`.

    It takes its settings (tasks, lengths, held-out dir, efficiency) from that module, so configs
    state them once, under ``model``. Needed only where the CLI insists on a ``data`` entry: without
    one, ``trainer.test`` uses the module's own ``test_dataloader``, which yields the same jobs.
    """

    def test_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not hasattr(module, "eval_jobs"):
            raise ValueError("EvalDataModule serves hydrahead_lit.eval.module.EvalModule; set `model.class_path` to it")
        return jobs_loader(module.eval_jobs())
