"""HeadSelectionCallback in real (tiny, CPU) Lightning fits on the planted teacher's twin model."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

import hydrahead_lit as hh
from hydrahead_lit.callbacks.head_selection import HeadSelectionCallback
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.probe import AttentionProbe

PROBES = dict(probe_tasks=["passkey", "niah_single"], probe_length=128, num_probes=2, tokenizer="demo")


class TwinModule(L.LightningModule):
    """Stage 1 in miniature: the twin student, LA twins trained on the per-head MSE, a fake alignment error."""

    def __init__(self, teacher, alignment_error: torch.Tensor | None = None) -> None:
        super().__init__()
        self.student = hh.convert(teacher, None, twins=True).train()
        self.student.requires_grad_(False)
        for name, p in self.student.named_parameters():
            p.requires_grad_(".self_attn.la." in name or ".self_attn.fusion." in name)
        if alignment_error is not None:
            self.register_buffer("alignment_error", alignment_error)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        probe = AttentionProbe(alignment=True)
        self.student(input_ids=batch[0], use_cache=False, logits_to_keep=1, attention_probe=probe)
        pairs = probe.alignment_pairs(len(decoder_layers(self.student)))
        return sum(torch.mean((la - fa) ** 2) for fa, la in pairs)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=1e-4)


def _alignment_error() -> torch.Tensor:
    err = torch.full((2, 4), 0.1)
    err[1, 2:] = 0.5  # the planted retrieval group is also the worst fitted
    return err


def _fit(module, callback, root, max_steps=2, ckpt_path=None, logger=True) -> L.Trainer:
    data = DataLoader(TensorDataset(torch.randint(0, 1024, (8, 32), generator=torch.Generator().manual_seed(0))), 2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=TensorBoardLogger(root) if logger else False,
        default_root_dir=root,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def test_fit_writes_selection_and_heatmap_and_resume_does_not_recompute(teacher, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = HeadSelectionCallback(method="hydrahead", ratio=3.0, **PROBES)
    module = TwinModule(teacher, _alignment_error())
    trainer = _fit(module, cb, tmp_path)
    out = tmp_path / "lightning_logs" / "version_0" / "head_selection.json"
    record = json.loads(out.read_text())
    assert record["chosen"] == [[1, 1]]  # the planted retrieval group, under a 3:1 budget of 4 groups
    assert record["plan"]["fa_groups"] == [[], [1]] and record["method"] == "hydrahead" and record["ratio"] == 3.0
    assert set(record["scores"]) == {"retrieval", "patching", "alignment"}
    assert all(len(v) == 2 and len(v[0]) == 2 for v in record["scores"].values())
    assert record["probe"] == {"tasks": ["passkey", "niah_single"], "length": 128, "count": 2, "seed": 0}
    assert max(max(r) for r in record["combined"]) == record["combined"][1][1]
    assert hh.HeadPlan.load(out).fa_groups == ((), (1,))  # the stage-2 config can read the file as a plan
    assert out.with_suffix(".png").stat().st_size > 0
    acc = EventAccumulator(str(out.parent), size_guidance={"images": 0}).Reload()
    assert "head_selection/heatmap" in acc.Tags()["images"]
    assert module.student.training  # train mode restored after scoring in eval mode
    assert cb.done and cb.plan.fa_groups == ((), (1,))

    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = HeadSelectionCallback(method="hydrahead", ratio=3.0, **PROBES)
    monkeypatch.setattr(resumed, "compute", lambda *a, **k: pytest.fail("a finished selection was recomputed"))
    _fit(TwinModule(teacher, _alignment_error()), resumed, tmp_path, max_steps=3, ckpt_path=ckpt)
    again = tmp_path / "lightning_logs" / "version_1" / "head_selection.json"  # rewritten from the saved state
    assert json.loads(again.read_text()) == record

    changed = HeadSelectionCallback(method="random", ratio=3.0, **PROBES)
    with pytest.raises(ValueError, match="other HeadSelectionCallback settings"):
        _fit(TwinModule(teacher, _alignment_error()), changed, tmp_path, max_steps=3, ckpt_path=ckpt)


def test_hybrid_student_is_refused_before_training(teacher, tmp_path):
    module = TwinModule(teacher)
    module.student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {1: [1]}))
    cb = HeadSelectionCallback(output=str(tmp_path / "s.json"), ratio=3.0, **PROBES)
    with pytest.raises(ValueError, match="not a hybrid student"):
        _fit(module, cb, tmp_path, logger=False)
    assert module.steps == 0


def test_existing_file_is_reused_or_protected(teacher, tmp_path, monkeypatch):
    out = tmp_path / "sel.json"
    first = HeadSelectionCallback(output=str(out), method="retrieval", ratio=3.0, **PROBES)
    _fit(TwinModule(teacher), first, tmp_path, logger=False)  # no alignment_error: that term is skipped
    record = json.loads(out.read_text())
    assert record["chosen"] == [[1, 1]] and "alignment" not in record["scores"]

    same = HeadSelectionCallback(output=str(out), method="retrieval", ratio=3.0, **PROBES)
    monkeypatch.setattr(same, "compute", lambda *a, **k: pytest.fail("an existing selection was recomputed"))
    _fit(TwinModule(teacher), same, tmp_path, logger=False)
    assert same.done and json.loads(out.read_text()) == record

    module = TwinModule(teacher)
    other = HeadSelectionCallback(output=str(out), method="random", ratio=3.0, **PROBES)
    with pytest.raises(ValueError, match="overwrite=True"):
        _fit(module, other, tmp_path, logger=False)
    assert module.steps == 0
    forced = HeadSelectionCallback(output=str(out), method="random", ratio=3.0, overwrite=True, **PROBES)
    _fit(TwinModule(teacher), forced, tmp_path, logger=False)
    assert json.loads(out.read_text())["method"] == "random"


def test_at_step_runs_mid_fit(teacher, tmp_path):
    cb = HeadSelectionCallback(output=str(tmp_path / "s.json"), method="layerwise", ratio=3.0, at_step=1, **PROBES)
    module = TwinModule(teacher, _alignment_error())
    _fit(module, cb, tmp_path, max_steps=3, logger=False)
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["global_step"] == 1 and module.steps == 3
    assert record["plan"]["fa_groups"] == [[], [0, 1]]  # one whole layer: the one holding the planted circuit
    assert record["info"]["fa_layers"] == [1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ratio=5.0), "budget cannot be met"),  # 4 groups / 6
        (dict(ratio=1.0, mode="global", min_per_layer=2), "min_per_layer"),
        (dict(ratio=3.0, mode="per_layer"), "every layer"),  # 2 groups a layer / 4
        (dict(ratio=3.0, probe_length=40), "too short"),
    ],
)
def test_bad_budget_fails_before_training(teacher, tmp_path, kwargs, match):
    module = TwinModule(teacher)
    cb = HeadSelectionCallback(output=str(tmp_path / "s.json"), **(PROBES | kwargs))
    with pytest.raises(ValueError, match=match):
        _fit(module, cb, tmp_path, logger=False)
    assert module.steps == 0 and not (tmp_path / "s.json").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        HeadSelectionCallback(method="best")
    with pytest.raises(ValueError, match="unknown score"):
        HeadSelectionCallback(weights={"retrieval": 1.0, "vibes": 1.0})
    with pytest.raises(ValueError, match="at_step"):
        HeadSelectionCallback(at_step=0)


def test_selections_of_one_run_share_the_probe_passes_until_the_weights_change(teacher, monkeypatch):
    import hydrahead_lit.callbacks.head_selection as hs
    from hydrahead_lit.data.demo import demo_tokenizer

    calls = []
    real = hs.retrieval_scores
    monkeypatch.setattr(hs, "retrieval_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    student, tok = hh.convert(teacher, None, twins=True), demo_tokenizer()
    three, one = (HeadSelectionCallback(method="hydrahead", ratio=r, **PROBES) for r in (3.0, 1.0))
    first = three.compute(student, tok)
    second = one.compute(student, tok)
    HeadSelectionCallback(method="layerwise", ratio=1.0, **PROBES).compute(student, tok)
    assert len(calls) == 1  # three selections, one set of probe passes
    assert first["scores"] == second["scores"] and first["head_scores"] == second["head_scores"]
    with torch.no_grad():
        next(student.parameters()).mul_(1.01)  # what a training step does: the scores are computed again
    three.compute(student, tok)
    assert len(calls) == 2
