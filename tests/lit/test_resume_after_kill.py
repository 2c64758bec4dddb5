"""Fault test: stage 2 killed with SIGKILL mid-run, resumed with --ckpt_path, against an uninterrupted run.

The resumed run must train exactly like the uninterrupted one (same losses, learning rates and final
weights), continue its counters (`train/tokens`) and log every step once as TensorBoard reads the run
directory (the killed run logged steps past its checkpoint; the resumed run supersedes them), and its
progress line must count steps of the whole run.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.lit.pipeline import ROOT, fit, make_corpus, make_teacher, make_twin, stage_config, write

STEPS, EVERY, KILL = 16, 6, 9


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _config(root: Path, name: str, teacher: Path, twin: Path, data: Path, kill: int | None = None) -> Path:
    cfg = stage_config("stage2", root / "runs" / name, teacher, data, steps=STEPS, init_from=str(twin),
                       head_selection=None, plan={"method": "manual", "fa_groups": {1: [0]}})  # fmt: skip
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = EVERY
    if kill is not None:
        cfg["trainer"]["callbacks"].append({"class_path": "tests.lit.pipeline.KillAt", "init_args": {"step": kill}})
    return write(cfg, root / "configs" / f"{name}.yaml")


def test_stage2_killed_and_resumed_matches_an_uninterrupted_run(tmp_path) -> None:
    teacher = make_teacher(tmp_path / "teacher")
    twin = make_twin(teacher, tmp_path / "twin")
    data = make_corpus(tmp_path / "data")
    straight, broken = tmp_path / "runs" / "straight", tmp_path / "runs" / "broken"
    fit(_config(tmp_path, "straight", teacher, twin, data))

    # the same run as `python main.py fit`, killed with SIGKILL after step KILL
    killed = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", "--config", str(_config(tmp_path, "broken", teacher, twin, data,
                                                                                 kill=KILL))],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    logged_before = [s for s, _ in _scalars(broken, "train/loss")]
    assert max(logged_before) > EVERY, "the killed run must have logged steps past its checkpoint"
    assert not (broken / "student").exists()

    # TensorBoard reads a run's event files in name order: whole-second creation time, then host, then pid.
    # A resume within the same second as the killed run's start (this test's runs are that fast) would sort
    # before it by its lower pid and be read first, so its session start could not supersede anything.
    started = max(int(f.name.split(".")[3]) for f in broken.rglob("events.out.tfevents.*"))
    while int(time.time()) <= started:
        time.sleep(0.05)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fit(_config(tmp_path, "broken", teacher, twin, data), "--ckpt_path", str(broken / "checkpoints" / "last.ckpt"))
    console = out.getvalue()
    assert f"resumed at step {EVERY} of {STEPS}" in console
    assert f"step {STEPS}/{STEPS} (100%)" in console and f"/{STEPS - EVERY}" not in console

    for tag in ("train/loss", "train/lr", "train/tokens", "train/grad_norm"):
        a, b = _scalars(straight, tag), _scalars(broken, tag)
        steps = [s for s, _ in b]
        assert len(steps) == len(set(steps)), f"{tag}: steps logged twice: {steps}"
        assert [s for s, _ in a] == steps == list(range(STEPS)), tag
        torch.testing.assert_close([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=0, msg=tag)
    tokens = [v for _, v in _scalars(broken, "train/tokens")]
    assert tokens[-1] == STEPS * 2 * 32  # counted across the kill: batch 2 x 32 tokens a step
    wa = load_file(straight / "student" / "model.safetensors")
    wb = load_file(broken / "student" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0, msg=k)
