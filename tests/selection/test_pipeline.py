"""Head selection after the project's own stage-1 module (AlignmentModule) on the planted teacher."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hydrahead_lit.callbacks.head_selection import HeadSelectionCallback
from hydrahead_lit.lit.alignment import AlignmentModule
from tests.selection.planted import planted_teacher
from tests.selection.test_callback import PROBES


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted")
    planted_teacher().save_pretrained(path)
    return path


def _batches() -> DataLoader:
    ids = torch.randint(0, 1024, (4, 33), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": r, "loss_mask": torch.ones(33, dtype=torch.bool)} for r in ids]
    return DataLoader(rows, batch_size=2)


def _fit(module, callback, root) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, _batches())


def test_selection_after_stage1(teacher_dir, tmp_path):
    module = AlignmentModule(teacher=str(teacher_dir), lr=1e-4, warmup_steps=0)
    cb = HeadSelectionCallback(output=str(tmp_path / "sel.json"), method="hydrahead", ratio=3.0, **PROBES)
    _fit(module, cb, tmp_path)
    record = json.loads((tmp_path / "sel.json").read_text())
    assert set(record["scores"]) == {"retrieval", "patching", "alignment"}  # stage 1 provided the error
    assert torch.isfinite(torch.tensor(record["scores"]["alignment"])).all()
    assert record["scores"]["retrieval"][1][1] == max(max(r) for r in record["scores"]["retrieval"])
    assert record["chosen"] == [[1, 1]]  # 3:1 on 4 groups: the planted retrieval group


def test_budget_error_before_stage1_trains(teacher_dir, tmp_path):
    # the student only exists after configure_model: the budget is checked in on_fit_start, before step 1
    module = AlignmentModule(teacher=str(teacher_dir), lr=1e-4, warmup_steps=0)
    cb = HeadSelectionCallback(output=str(tmp_path / "sel.json"), ratio=5.0, **PROBES)
    with pytest.raises(ValueError, match="budget cannot be met"):
        _fit(module, cb, tmp_path)
    assert module.trainer.global_step == 0 and not (tmp_path / "sel.json").exists()
