"""Bad input fails with a clear ValueError before any training starts."""

import json
from types import SimpleNamespace

import pytest

from hydrahead_lit.callbacks import ExportStudent
from hydrahead_lit.cli import check_tokenizers
from hydrahead_lit.lit import AlignmentModule, DistillationModule, LongContextModule, PretrainModule


def test_missing_teacher_path(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        AlignmentModule(teacher=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        DistillationModule(teacher=str(tmp_path / "empty"), plan={"method": "all_la"})


def test_unsupported_teacher(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="supported"):
        AlignmentModule(teacher=str(tmp_path))


def test_student_given_as_teacher(teacher_dir, student_dir) -> None:
    with pytest.raises(ValueError, match="original model"):
        AlignmentModule(teacher=str(student_dir))


def test_stage2_without_head_selection(teacher_dir, twin_dir) -> None:
    with pytest.raises(ValueError, match="stage 2 needs a head plan"):
        DistillationModule(teacher=str(teacher_dir), init_from=str(twin_dir))
    with pytest.raises(ValueError, match="does not exist"):
        DistillationModule(teacher=str(teacher_dir), init_from=str(twin_dir), head_selection="missing.json")
    with pytest.raises(ValueError, match="not both"):
        DistillationModule(
            teacher=str(teacher_dir), init_from=str(twin_dir), head_selection="x.json", plan={"method": "all_la"}
        )


def test_budget_that_cannot_be_met(teacher_dir, twin_dir) -> None:
    # 2 layers x 2 KV groups = 4 groups: 5:1 would need 2/3 of a group
    with pytest.raises(ValueError, match="cannot be met"):
        DistillationModule(teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "random", "ratio": 5})
    with pytest.raises(ValueError, match="plan.method"):
        DistillationModule(teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "best"})
    with pytest.raises(ValueError, match="do not exist"):
        DistillationModule(
            teacher=str(teacher_dir), init_from=str(twin_dir), plan={"method": "manual", "fa_groups": {0: [7]}}
        )


def test_selection_file_for_another_model(teacher_dir, twin_dir, tmp_path) -> None:
    plan = {"num_layers": 3, "num_kv_groups": 2, "group_size": 2, "fa_groups": [[0], [], []]}
    (tmp_path / "head_selection.json").write_text(json.dumps({"plan": plan, "method": "hydrahead"}))
    with pytest.raises(ValueError, match="plan is for"):
        DistillationModule(
            teacher=str(teacher_dir), init_from=str(twin_dir), head_selection=str(tmp_path / "head_selection.json")
        )


def test_stage_hand_off_mistakes(teacher_dir, twin_dir, student_dir) -> None:
    with pytest.raises(ValueError, match="twin"):
        LongContextModule(init_from=str(twin_dir))
    with pytest.raises(ValueError, match="plain model"):
        LongContextModule(init_from=str(teacher_dir))
    with pytest.raises(ValueError, match="needs a teacher"):
        LongContextModule(init_from=str(student_dir), kd_weight=1.0)
    with pytest.raises(ValueError, match="already a converted student"):
        DistillationModule(teacher=str(teacher_dir), init_from=str(student_dir), plan={"method": "all_la"})
    with pytest.raises(ValueError, match="twin student"):
        AlignmentModule(teacher=str(teacher_dir), init_from=str(student_dir))


def test_bad_options(teacher_dir) -> None:
    with pytest.raises(ValueError, match="mixed_precision"):
        AlignmentModule(teacher=str(teacher_dir), mixed_precision="fp8")
    with pytest.raises(ValueError, match="vocab_size"):
        PretrainModule(model_config={"model_type": "qwen3", "vocab_size": 10})
    with pytest.raises(ValueError, match="model_type"):
        PretrainModule(model_config={"model_type": "gpt2", "vocab_size": 2048})


def test_no_parameter_matches_trainable(teacher_dir, tmp_path) -> None:
    module = AlignmentModule(teacher=str(teacher_dir), trainable=["no_such_parameter"])
    with pytest.raises(ValueError, match="no parameter matches"):
        module.configure_model()


def test_data_prepared_with_another_tokenizer(teacher_dir, tmp_path) -> None:
    from hydrahead_lit.data.demo import demo_tokenizer

    tok = demo_tokenizer()
    tok.save_pretrained(tmp_path / "teacher_tok")
    model = SimpleNamespace(tokenizer_source=str(tmp_path / "teacher_tok"))
    same = SimpleNamespace(tokenizer_spec="demo", tokenizer=tok)
    check_tokenizers(model, same)  # the same vocabulary under another name is fine
    tok.add_tokens(["<extra>"])
    other = SimpleNamespace(tokenizer_spec="elsewhere", tokenizer=tok)
    with pytest.raises(ValueError, match="not the model's tokenizer"):
        check_tokenizers(model, other)


def test_export_refuses_to_overwrite(tmp_path) -> None:
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    trainer = SimpleNamespace(ckpt_path=None, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="already holds an exported student"):
        ExportStudent().on_fit_start(trainer, None)
    ExportStudent(overwrite=True).on_fit_start(trainer, None)


def test_export_appears_whole_and_replaces_only_when_written(student_dir, tmp_path, monkeypatch) -> None:
    import hydrahead_lit as hh
    from hydrahead_lit.callbacks import export as export_mod

    out = tmp_path / "student"
    out.mkdir()
    (out / "config.json").write_text('{"earlier": true}')
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda *a: None),
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path))  # fmt: skip
    module = SimpleNamespace(student=hh.load_student(str(student_dir)), tokenizer_source=None)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "save_hf", crash)
    with pytest.raises(OSError, match="disk full"):
        ExportStudent(str(out), overwrite=True).export(trainer, module)
    assert (out / "config.json").read_text() == '{"earlier": true}'  # the earlier export is untouched
    monkeypatch.undo()
    ExportStudent(str(out), overwrite=True).export(trainer, module)
    assert hh.load_student(str(out)) is not None and (out / "README.md").is_file()
    assert "earlier" not in (out / "config.json").read_text()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".student.replaced-"))
    assert leftovers == []  # the replaced export is gone; only a crashed write leaves its .partial- directory
