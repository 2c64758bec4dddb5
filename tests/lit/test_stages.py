"""Each stage trains a few steps on a tiny teacher; exactly the intended parameters change."""

import json
import re

import lightning as L
import pytest
import torch

from hydrahead_lit.lit import AlignmentModule, DistillationModule, LongContextModule, PretrainModule
from tests.lit.conftest import loader


def _trainer(tmp_path, steps: int = 3, **kw) -> L.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kw,
    )  # fmt: skip


def _fit_and_diff(module, tmp_path) -> tuple[set[str], set[str], dict]:
    module.configure_model()  # idempotent: fit reuses these models
    before = {n: p.detach().clone() for n, p in module.student.named_parameters()}
    teacher_before = None if module.teacher is None else {n: p.clone() for n, p in module.teacher.state_dict().items()}
    _trainer(tmp_path).fit(module, train_dataloaders=loader())
    changed = {n for n, p in module.student.named_parameters() if not torch.equal(p.detach(), before[n])}
    if teacher_before is not None:
        for n, p in module.teacher.state_dict().items():
            assert torch.equal(p, teacher_before[n]), f"teacher parameter {n} changed"
        assert not module.teacher.training
    return changed, set(module.trainable_names), before


def test_stage1_trains_only_la_and_fusion(teacher_dir, tmp_path) -> None:
    module = AlignmentModule(teacher=str(teacher_dir), lr=1e-2, warmup_steps=0)
    changed, trainable, before = _fit_and_diff(module, tmp_path)
    assert trainable and all(re.search(r"\.self_attn\.(la|fusion)\.", n) for n in trainable)
    assert changed == trainable  # every LA/fusion tensor moved, nothing else did
    assert module.alignment_error.shape == (2, 4) and torch.isfinite(module.alignment_error).all()
    assert module.teacher is None  # the twin student carries the teacher's weights itself


def test_stage2_trains_the_whole_student_against_a_frozen_teacher(teacher_dir, twin_dir, tmp_path) -> None:
    module = DistillationModule(
        teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "manual", "fa_groups": {0: [1]}},
        lr=1e-2, warmup_steps=0, hidden_weight=0.1, ce_weight=0.5, temperature=2.0,
    )  # fmt: skip
    changed, trainable, _ = _fit_and_diff(module, tmp_path)
    assert trainable == {n for n, _ in module.student.named_parameters()}
    assert changed == trainable
    assert module.student.head_plan.fa_groups == ((1,), ())


def test_stage2_trainable_patterns_are_configurable(teacher_dir, twin_dir, tmp_path) -> None:
    module = DistillationModule(
        teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "all_la"},
        trainable=[r"\.self_attn\."], frozen=[r"o_proj"], lr=1e-2, warmup_steps=0,
    )  # fmt: skip
    changed, trainable, _ = _fit_and_diff(module, tmp_path)
    assert trainable and all(".self_attn." in n and "o_proj" not in n for n in trainable)
    assert changed == trainable


def test_stage3_lm_loss_with_kd(teacher_dir, student_dir, tmp_path) -> None:
    module = LongContextModule(
        init_from=str(student_dir), teacher=str(teacher_dir), kd_weight=0.5, lr=1e-2, warmup_steps=0
    )
    changed, trainable, _ = _fit_and_diff(module, tmp_path)
    assert changed == trainable == {n for n, _ in module.student.named_parameters()}


def test_stage3_extends_the_students_positions_past_the_teachers(student_dir, tmp_path) -> None:
    from types import SimpleNamespace

    from hydrahead_lit.cli import check_data_fits_model

    kept = LongContextModule(init_from=str(student_dir))
    limit = kept.model_config_dict["max_position_embeddings"]
    with pytest.raises(ValueError, match=f"exceeds the model's max_position_embeddings={limit}"):
        check_data_fits_model(kept, SimpleNamespace(seq_len=2 * limit, vocab_size=None))
    module = LongContextModule(init_from=str(student_dir), max_position_embeddings=2 * limit, lr=1e-2, warmup_steps=0,
                               activation_checkpointing=True)  # as configs/smollm2/stage3.yaml runs it  # fmt: skip
    check_data_fits_model(module, SimpleNamespace(seq_len=2 * limit, vocab_size=None))  # accepted now
    changed, trainable, _ = _fit_and_diff(module, tmp_path)
    assert changed == trainable
    module.student.save_pretrained(tmp_path / "export")  # what ExportStudent writes
    assert json.loads((tmp_path / "export" / "config.json").read_text())["max_position_embeddings"] == 2 * limit
    with pytest.raises(ValueError, match="extends a context, it does not shorten it"):
        LongContextModule(init_from=str(student_dir), max_position_embeddings=limit // 2)


def test_pretrain_from_config(tmp_path) -> None:
    cfg = {
        "model_type": "qwen3", "vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    }  # fmt: skip
    module = PretrainModule(model_config=cfg, tokenizer="demo", lr=1e-2, warmup_steps=0)
    changed, trainable, _ = _fit_and_diff(module, tmp_path)
    assert changed == trainable


def test_teacher_is_kept_out_of_checkpoints(teacher_dir, twin_dir, tmp_path) -> None:
    module = DistillationModule(teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "all_la"})
    module.configure_model()
    assert module.teacher is not None
    keys = module.state_dict().keys()
    assert keys and not any(k.startswith("teacher.") for k in keys)
    trainer = _trainer(tmp_path, steps=1, enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=loader())
    path = tmp_path / "s2.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["hydrahead_stage"] == "distillation"
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    # ckpt_path resumes the same stage only
    stage1 = AlignmentModule(teacher=str(teacher_dir))
    with pytest.raises(ValueError, match="resumes the same stage"):
        stage1.on_load_checkpoint(ckpt)


def test_pretrain_logs_retrieval_accuracy(tmp_path) -> None:
    cfg = {
        "model_type": "qwen3", "vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    }  # fmt: skip
    module = PretrainModule(model_config=cfg, retrieval_tasks=["passkey"], retrieval_length=128, retrieval_samples=2)
    trainer = _trainer(tmp_path, steps=1, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=1)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert 0.0 <= float(trainer.callback_metrics["val/retrieval_passkey"]) <= 1.0
    assert "val/ppl" in trainer.callback_metrics
    with pytest.raises(ValueError, match="retrieval_tasks"):
        PretrainModule(model_config=cfg, retrieval_tasks=["sudoku"])
