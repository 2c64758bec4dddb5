"""The command line as a user meets it, on a tiny pipeline: refusals that hold and write nothing, checks
that cannot be skipped, one-line config errors, and a console that says what happened and where it went."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import yaml

from hydrahead_lit.cli import main
from tests.lit.pipeline import ROOT, fit, make_corpus, make_teacher, snapshot, stage_config, write


def _run(config: Path, *extra: str) -> str:
    """Fit through the command line; returns what it printed (stdout and stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        fit(config, *extra)
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    teacher = make_teacher(root / "teacher")
    data = make_corpus(root / "data" / "train")
    s1, s2 = root / "runs" / "stage1", root / "runs" / "stage2"
    cfg1 = write(stage_config("stage1", s1, teacher, data), root / "configs" / "stage1.yaml")
    out1 = _run(cfg1)
    cfg2 = write(stage_config("stage2", s2, teacher, data, init_from=str(s1 / "student"), head_selection=None,
                              plan={"method": "all_la"}), root / "configs" / "stage2.yaml")  # fmt: skip
    out2 = _run(cfg2)
    return {"root": root, "teacher": teacher, "data": data, "s1": s1, "s2": s2, "cfg1": cfg1, "cfg2": cfg2,
            "out1": out1, "out2": out2}  # fmt: skip


def _main_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_console_shows_progress_selection_and_outputs(tiny) -> None:
    out1, out2 = tiny["out1"], tiny["out2"]
    assert "[distillation] step 4/4 (100%)" in out2 and "tok/s" in out2 and "ETA 0:00" in out2, out2
    assert "loss" in out2.split("step 4/4")[1].splitlines()[0]
    assert "Epoch 0/" not in out2  # Lightning's epoch bar, which read "0/-2" under max_steps
    # the selection as a table, and where everything went
    assert "head selection (hydrahead, 1/4 KV groups keep full attention" in out1
    assert f"saved to {tiny['s1'] / 'head_selection.json'}" in out1
    assert f"head selection: {tiny['s1'] / 'head_selection.json'}" in out1
    assert f"student:        {tiny['s2'] / 'student'}" in out2
    assert f"run directory:  {tiny['s2']}  (tensorboard --logdir {tiny['s2'].parent})" in out2
    assert f"checkpoint:     {tiny['s2'] / 'checkpoints' / 'last.ckpt'}" in out2
    for noise in ("💡 Tip", "module(s) in eval mode", "has `__len__` defined", "Loading weights", "LeafSpec"):
        assert noise not in out1 + out2, noise
    # the config is written once the run started, the hyperparameters with it
    assert (tiny["s2"] / "config.yaml").is_file() and (tiny["s2"] / "hparams.yaml").is_file()
    assert "hh.load_student" in (tiny["s2"] / "student" / "README.md").read_text()


def test_checkpoint_of_another_stage_is_refused_before_anything_is_written(tiny, capsys) -> None:
    before = snapshot(tiny["s2"])
    ckpt = tiny["s1"] / "checkpoints" / "last.ckpt"
    line = _main_error(capsys, "fit", "--config", str(tiny["cfg2"]), "--ckpt_path", str(ckpt))
    assert "stage: the checkpoint is of stage 'alignment'" in line and "this config runs stage 'distillation'" in line
    assert snapshot(tiny["s2"]) == before


def test_checkpoint_of_another_plan_or_teacher_is_refused(tiny) -> None:
    before = snapshot(tiny["s2"])
    with pytest.raises(ValueError, match="nope.ckpt' does not exist"):
        fit(tiny["cfg2"], "--ckpt_path", str(tiny["root"] / "nope.ckpt"))
    ckpt = str(tiny["s2"] / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match=r"plan: the checkpoint's student has FA KV groups \{\} \(0/4\), this "
                                         r"config's has FA KV groups \{0: \[1\]\} \(1/4\)"):  # fmt: skip
        fit(tiny["cfg2"], "--ckpt_path", ckpt, "--model.plan", "{method: manual, fa_groups: {0: [1]}}")
    other = make_teacher(tiny["root"] / "other_teacher", seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match=r"teacher: the checkpoint was trained against .*teacher \(fingerprint "):
        fit(tiny["cfg2"], "--ckpt_path", ckpt, "--model.teacher", str(other), "--data.tokenizer", str(other))
    assert snapshot(tiny["s2"]) == before


def test_refused_rerun_leaves_the_run_directory_byte_for_byte(tiny, tmp_path) -> None:
    before = snapshot(tiny["s2"])
    with pytest.raises(ValueError, match="already holds an exported student"):
        fit(tiny["cfg2"], "--model.lr", "0.01")
    assert snapshot(tiny["s2"]) == before
    lr = yaml.safe_load(tiny["cfg2"].read_text())["model"]["init_args"]["lr"]  # the config's, not the refused 0.01
    assert yaml.safe_load((tiny["s2"] / "config.yaml").read_text())["model"]["init_args"]["lr"] == lr != 0.01
    # a refusal from inside fit (a corrupt corpus found at data setup, after the logger opened its file)
    bad = tmp_path / "bad"
    shutil.copytree(tiny["data"], bad)
    chunk = sorted(bad.glob("chunk-*.bin"))[3]
    data = bytearray(chunk.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    chunk.write_bytes(bytes(data))
    cfg = yaml.safe_load(tiny["cfg2"].read_text())
    cfg["data"]["init_args"]["data_dirs"] = str(bad)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ExportStudent"):
            cb["init_args"]["overwrite"] = True  # passes the checks before fit
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt"):
        fit(write(cfg, tmp_path / "rerun.yaml"))
    assert snapshot(tiny["s2"]) == before


def test_teacher_without_tokenizer_is_refused(tiny, tmp_path) -> None:
    teacher = make_teacher(tmp_path / "bare", tokenizer=False)
    with pytest.raises(ValueError, match="holds no tokenizer files .* cannot be checked"):
        fit(tiny["cfg2"], "--model.teacher", str(teacher), "--data.tokenizer", "demo")


def test_rows_longer_than_the_teacher_positions_are_refused(tiny, capsys) -> None:
    line = _main_error(capsys, "fit", "--config", str(tiny["cfg2"]), "--data.seq_len", "300")
    assert "data.seq_len=300 exceeds the model's max_position_embeddings=256" in line


def test_config_errors_are_one_line_naming_the_key(tiny, capsys) -> None:
    line = _main_error(capsys, "fit", "--config", str(tiny["cfg2"]), "--model.lr", "abc")
    assert line.startswith("error: model.lr: expected float, got 'abc'")
    line = _main_error(capsys, "fit", "--config", str(tiny["cfg2"]), "--model.lrr", "1")
    assert line.startswith("error: model.lrr: not an option of hydrahead_lit.lit.DistillationModule")
    line = _main_error(capsys, "fit", "--config", str(tiny["cfg2"]), "--model.plan", "{method: best}")
    assert "plan.method must be one of all_la" in line and line.startswith("error: model hydrahead_lit.lit.")


def test_stages_checkpoint_periodically_by_default(tiny, tmp_path) -> None:
    import datetime

    from lightning.pytorch.callbacks import ModelCheckpoint

    for path in sorted((ROOT / "configs").glob("*/stage*.yaml")):  # every shipped stage saves as it goes:
        trainer = yaml.safe_load(path.read_text())["trainer"]
        given = [c.get("init_args", {}) for c in trainer.get("callbacks", [])
                 if c["class_path"].endswith("ModelCheckpoint")]  # fmt: skip
        # by its own periodic ModelCheckpoint, by the default one below, or it says it needs none
        periodic = any(a.get("every_n_train_steps") or a.get("train_time_interval") for a in given)
        assert periodic or not given or trainer.get("enable_checkpointing") is False, path
    for scale in ("demo", "qwen3-1.7b"):
        assert "every_n_train_steps" in (ROOT / "configs" / scale / "stage2.yaml").read_text()
    # a config without a ModelCheckpoint gets one on a clock
    cfg = yaml.safe_load(tiny["cfg2"].read_text())
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "ModelCheckpoint" not in c["class_path"]]
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    for cb in cfg["trainer"]["callbacks"]:
        cb.setdefault("init_args", {})["dirpath"] = str(tmp_path / "student")
    cfg["trainer"]["max_steps"] = cfg["trainer"]["val_check_interval"] = 1
    cli = fit(write(cfg, tmp_path / "plain.yaml"))
    (checkpoint,) = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint._train_time_interval == datetime.timedelta(minutes=10) and checkpoint.save_last
