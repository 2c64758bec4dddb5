"""EvalModule through Lightning's test loop and LightningCLI: files, plots, TensorBoard, bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from hydrahead_lit.eval.compare import main as compare_main
from hydrahead_lit.eval.module import EvalModule
from hydrahead_lit.eval.report import FIG_DPI, FIG_SIZE

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(tasks=["passkey", "mqar"], lengths=[160, 256], num_samples=2, max_new_tokens=4, batch_size=2,
            decode_tokens=2, repeats=1)  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the 8-byte signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def evaluate(checkpoint: str, out: Path, logs: Path, **kw) -> dict:
    module = EvalModule(checkpoint, output_dir=str(out), **{"tokenizer": "demo", **FAST, **kw})
    trainer = Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(str(logs), name="eval"),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.test(module)
    return json.loads((out / "results.json").read_text())


def test_student_run_writes_json_table_plots_and_tensorboard(model_dirs, tmp_path) -> None:
    res = evaluate(model_dirs["student"], tmp_path / "student", tmp_path / "tb")
    assert res["kind"] == "student" and res["name"] == "student"
    assert set(res["ruler"]) == {"passkey", "mqar"} and set(res["ruler"]["mqar"]) == {"160", "256"}
    assert set(res["average"]) == {"160", "256"}
    assert res["model"]["kv_cache_fraction"] == 0.25  # 1 FA KV group of 4
    eff = res["efficiency"]["256"]
    # the measured hybrid cache after prefill equals the analytic count, and is below the teacher's KV
    assert eff["cache_bytes"] == eff["cache_bytes_analytic"] > 0
    assert eff["cache_bytes"] != eff["teacher_kv_bytes"]
    table = (tmp_path / "student" / "results.md").read_text()
    assert "| student | student | 25.0% |" in table and "| mqar | student |" in table
    expected = (round(FIG_SIZE[0] * FIG_DPI), round(FIG_SIZE[1] * FIG_DPI))
    for name in ("accuracy_average", "accuracy_passkey", "accuracy_mqar", "cache_bytes"):
        assert png_size(tmp_path / "student" / f"{name}.png") == expected
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and max(e.stat().st_size for e in events) > 500  # scalars and the table were written


def test_teacher_runs_are_deterministic_and_compare(model_dirs, tmp_path, capsys) -> None:
    a = evaluate(model_dirs["teacher"], tmp_path / "t1", tmp_path / "tb", tokenizer=None, name="teacher")
    b = evaluate(model_dirs["teacher"], tmp_path / "t2", tmp_path / "tb", tokenizer=None, name="teacher_again",
                 efficiency=False)  # fmt: skip
    assert a["ruler"] == b["ruler"] and a["average"] == b["average"]
    # teachers measure a standard cache: all KV, equal to the analytic count
    assert a["efficiency"]["160"]["cache_bytes"] == a["efficiency"]["160"]["teacher_kv_bytes"]
    assert compare_main([str(tmp_path / "t1"), str(tmp_path / "t2"), "-o", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["teacher", "teacher_again"]
    table = (tmp_path / "report" / "comparison.md").read_text()
    assert "| teacher | teacher |" in table and "| teacher_again | teacher |" in table
    assert png_size(tmp_path / "report" / "accuracy_average.png") == (640, 400)
    assert "comparison.md" in capsys.readouterr().out


def test_compare_rejects_run_without_results(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path / "empty"), "-o", str(tmp_path / "out")])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"checkpoint": "/nonexistent/student"}, "does not exist"),
        ({"lengths": [256, 1024]}, r"exceed the model's limit of 320"),
        ({"tasks": ["niah_single", "qa_1"]}, "unknown task"),
        ({"tasks": ["niah_multiquery"], "lengths": [160]}, "too short for task 'niah_multiquery'"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"held_out_dir": "/nonexistent/val"}, "held_out_dir"),
    ],
    ids=["missing-checkpoint", "beyond-limit", "unknown-task", "cell-too-short", "zero-budget", "missing-held-out"],
)
def test_bad_input_fails_before_loading(model_dirs, tmp_path, kwargs, message) -> None:
    args = {"checkpoint": model_dirs["teacher"], "output_dir": str(tmp_path / "run"), **FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        EvalModule(**args)


def test_refuses_to_overwrite_results(model_dirs, tmp_path) -> None:
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="exists; pass --model.overwrite"):
        EvalModule(model_dirs["teacher"], output_dir=str(tmp_path), lengths=[256], tasks=["passkey"])
    EvalModule(model_dirs["teacher"], output_dir=str(tmp_path), lengths=[256], tasks=["passkey"], overwrite=True)


def test_config_through_lightning_cli(model_dirs, tmp_path) -> None:
    """`python main.py test --config configs/eval/ruler.yaml --model.checkpoint ...` through the project's CLI."""
    from hydrahead_lit.cli import build_cli

    args = ["test", "--config", str(ROOT / "configs/eval/ruler.yaml"), "--model.checkpoint", model_dirs["teacher"],
            "--model.output_dir", str(tmp_path / "run"), "--model.lengths", "[256]", "--model.num_samples", "1",
            "--model.tasks", "[passkey]", "--model.repeats", "1",
            "--model.decode_tokens", "1", "--model.held_out_dir", "null",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "tb"),
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    build_cli(args)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["tasks"] == ["passkey"] and set(res["ruler"]["passkey"]) == {"256"}
    assert res["config"]["max_new_tokens"]["passkey"] == 10  # the per-task budgets of the YAML


@pytest.mark.gpu
def test_student_on_gpu(model_dirs, tmp_path) -> None:
    """The module moves the loaded model to the GPU; figures carry the card's name and peak memory."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    module = EvalModule(model_dirs["student"], tokenizer="demo", output_dir=str(tmp_path / "gpu"), **FAST)
    Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False).test(module)
    res = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert res["device"] == torch.cuda.get_device_name(0)
    assert res["efficiency"]["256"]["peak_memory_bytes"] > 0
    assert res["efficiency"]["256"]["cache_bytes"] == res["efficiency"]["256"]["cache_bytes_analytic"]


def test_datamodule_serves_the_modules_jobs(model_dirs, tmp_path) -> None:
    from hydrahead_lit.eval.datamodule import EvalDataModule, eval_jobs

    jobs = eval_jobs(["a", "b"], [1, 2], held_out=True, efficiency_lengths=[2])
    assert [(j["kind"], j["task"], j["length"]) for j in jobs] == [
        ("ruler", "a", 1), ("ruler", "a", 2), ("ruler", "b", 1), ("ruler", "b", 2), ("perplexity", "", 0),
        ("efficiency", "", 2),
    ]  # fmt: skip
    module = EvalModule(model_dirs["teacher"], output_dir=str(tmp_path / "dm"), tasks=["passkey"], lengths=[160],
                        num_samples=1, max_new_tokens=2, efficiency=False)  # fmt: skip
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.test(module, datamodule=EvalDataModule())
    res = json.loads((tmp_path / "dm" / "results.json").read_text())
    assert set(res["ruler"]["passkey"]) == {"160"} and res["efficiency"] is None


@pytest.mark.parametrize("fast", [None, False, True])
def test_fast_generation_is_handed_to_the_student(model_dirs, tmp_path, fast) -> None:
    module = EvalModule(model_dirs["student"], tokenizer="demo", output_dir=str(tmp_path), lengths=[256],
                        tasks=["passkey"], fast_generation=fast)  # fmt: skip
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.setup("test")
    assert module.model.fast_generation is fast  # None: the model's default (the fast path on CUDA only)
