"""Running the project's own command lines as jobs: YAML configs with fields set, `python main.py ...`
subprocesses run a few at a time (spread over the visible GPUs), and the last logged metrics of a run.

Experiments are built from these so that every step they take is a command a user can rerun by hand:
the config each job ran is saved next to its log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_config(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def callbacks(cfg: dict, class_suffix: str) -> list[dict]:
    """The `init_args` of every trainer callback whose class path ends with `class_suffix`."""
    return [c.setdefault("init_args", {}) for c in cfg["trainer"].get("callbacks", [])
            if c["class_path"].endswith(class_suffix)]  # fmt: skip


def set_run_dir(cfg: dict, run_dir: Path) -> None:
    """Send the TensorBoard logs to `run_dir` itself and the exported model to `run_dir/student`."""
    logger = cfg["trainer"]["logger"]["init_args"]
    logger.update(save_dir=str(run_dir.parent), name=run_dir.name, version="")
    for export in callbacks(cfg, "ExportStudent"):
        export["dirpath"] = str(run_dir / "student")


def job_outputs(cfg: dict) -> tuple[Path, Path]:
    """(the file whose presence marks the job finished, the job's own directory) of a stage or evaluation config:
    a stage's exported student (written whole, then renamed into place) and its log directory; an evaluation's
    results.json (written at its end) and its output directory."""
    exports = callbacks(cfg, "ExportStudent")
    if exports:
        logger = cfg["trainer"]["logger"]["init_args"]
        return Path(exports[0]["dirpath"]) / "config.json", Path(logger["save_dir"]) / logger["name"]
    out = Path(cfg["model"]["init_args"]["output_dir"])
    return out / "results.json", out


def scale_steps(cfg: dict, scale: float) -> None:
    """Multiply `trainer.max_steps` (validation stays at the end of the run)."""
    t = cfg["trainer"]
    t["max_steps"] = max(2, round(t["max_steps"] * scale))
    t["val_check_interval"] = min(t.get("val_check_interval") or t["max_steps"], t["max_steps"])


@dataclass
class Job:
    """One `python main.py <subcommand> --config <config>` run, its config saved at `config`."""

    name: str
    subcommand: str
    cfg: dict
    config: Path
    log: Path

    def argv(self) -> list[str]:
        return [sys.executable, str(ROOT / "main.py"), self.subcommand, "--config", str(self.config)]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _start(job: Job, gpu: str | None, threads: int) -> tuple[subprocess.Popen, TextIO]:
    """Write the job's config, open its log and start it (on `gpu`, when given)."""
    job.config.parent.mkdir(parents=True, exist_ok=True)
    job.config.write_text(yaml.safe_dump(job.cfg, sort_keys=False))
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = job.log.open("w")
    try:
        return subprocess.Popen(job.argv(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log
    except OSError:
        log.close()
        raise


def run_jobs(jobs: list[Job], parallel: int = 1, slots: threading.Semaphore | None = None) -> dict[str, float]:
    """Run `jobs`, at most `parallel` at once, round-robin over the visible GPUs; returns seconds per job.

    `slots`, shared by several callers (e.g. the threads of seeds run at the same time), bounds the jobs they
    run together: each job holds one while it runs. A failing job stops the others and raises a RuntimeError
    with its command and the end of its log.
    """
    gpus = gpu_count()
    parallel = max(1, min(parallel, len(jobs)))
    threads = max(1, (os.cpu_count() or 2) // parallel)
    pending, running, seconds = list(enumerate(jobs)), {}, {}
    try:
        while pending or running:
            while pending and len(running) < parallel and (slots is None or slots.acquire(blocking=False)):
                i, job = pending.pop(0)
                try:
                    proc, log = _start(job, str(i % gpus) if gpus else None, threads)
                except BaseException:
                    if slots is not None:
                        slots.release()
                    raise
                running[job.name] = (proc, log, job, time.perf_counter())
                print(f"  started {job.name}: {' '.join(job.argv()[1:])}  (log: {job.log})", flush=True)
            time.sleep(0.5)
            for name, (proc, log, job, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if slots is not None:
                    slots.release()
                seconds[name] = time.perf_counter() - start
                if proc.returncode != 0:
                    tail = "\n".join(job.log.read_text(errors="replace").splitlines()[-30:])
                    raise RuntimeError(f"job {name} failed (exit {proc.returncode}): {' '.join(job.argv())}\n"
                                       f"--- last lines of {job.log} ---\n{tail}")  # fmt: skip
                print(f"  finished {name} in {seconds[name]:.0f} s", flush=True)
    finally:
        for proc, log, _, _ in running.values():
            proc.kill()
            proc.wait()
            log.close()
            if slots is not None:
                slots.release()
    return seconds


def _scalars(log_dir: str | Path) -> Iterator[tuple[str, list]]:
    """(tag, its points) of every scalar in each TensorBoard event file of `log_dir` (not its subfolders)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            yield tag, acc.Scalars(tag)


def last_scalars(log_dir: str | Path) -> dict[str, float]:
    """The last value of every scalar in the TensorBoard event files of `log_dir` (not its subfolders)."""
    values: dict[str, tuple[float, float]] = {}  # tag -> (wall time, value)
    for tag, points in _scalars(log_dir):
        last = points[-1]
        if tag not in values or last.wall_time >= values[tag][0]:
            values[tag] = (last.wall_time, float(last.value))
    return {tag: v for tag, (_, v) in sorted(values.items())}


def logged_steps(log_dir: str | Path) -> int:
    """Optimizer steps of a run at its last logged point, from the TensorBoard files of `log_dir` (0 if none).

    Lightning logs the metrics of optimizer step n (training, or the validation after it) at step n - 1, and the
    stages validate after their last step, so this is the number of steps the run took.
    """
    return 1 + max((p.step for _, points in _scalars(log_dir) for p in points), default=-1)
