"""`python main.py test --config configs/eval/ruler.yaml`: the TensorBoard run is named after the model
(a second evaluation of that name gets its own run) and holds the figures as images, next to the curves."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hydrahead_lit.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(checkpoint: str, name: str, out: Path, tb: Path) -> str:
    args = ["test", "--config", str(ROOT / "configs/eval/ruler.yaml"), "--model.checkpoint", checkpoint,
            "--model.tokenizer", "demo", "--model.name", name, "--model.output_dir", str(out),
            "--model.lengths", "[160]", "--model.num_samples", "1", "--model.tasks", "[passkey]",
            "--model.max_new_tokens", "4", "--model.efficiency", "false", "--model.held_out_dir", "null",
            "--trainer.logger.init_args.save_dir", str(tb), "--trainer.accelerator", "cpu"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        build_cli(args)
    return printed.getvalue()


def test_eval_run_is_named_after_the_model_and_logs_its_figures(model_dirs, tmp_path) -> None:
    printed = _evaluate(model_dirs["student"], "hydrahead", tmp_path / "a", tmp_path / "tb")
    run = tmp_path / "tb" / "eval" / "hydrahead"
    assert run.is_dir() and not list((tmp_path / "tb" / "eval").glob("version_*"))
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    assert {"eval/accuracy_average", "eval/accuracy_passkey"} <= images, images
    assert "ruler/passkey" in acc.Tags()["scalars"]
    assert "[hydrahead] evaluation job 1/1" in printed and f"results:        {tmp_path / 'a'}" in printed
    _evaluate(model_dirs["student"], "hydrahead", tmp_path / "b", tmp_path / "tb")
    assert (tmp_path / "tb" / "eval" / "hydrahead-2").is_dir()  # a second evaluation never shares the run
