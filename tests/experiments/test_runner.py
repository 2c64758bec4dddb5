"""The job runner of the experiments: config edits, subprocess jobs, and reading back TensorBoard scalars."""

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from hydrahead_lit.experiments import runner
from hydrahead_lit.experiments.runner import (
    ROOT,
    Job,
    callbacks,
    last_scalars,
    load_config,
    logged_steps,
    run_jobs,
    scale_steps,
    set_run_dir,
)

CONFIGS = ROOT / "configs" / "miniature"


class Script(Job):
    """A job running a Python snippet instead of main.py; the snippet gets the config path as argv[1]."""

    def __init__(self, tmp: Path, name: str, code: str, cfg: dict | None = None) -> None:
        config, log = tmp / "configs" / f"{name}.yaml", tmp / "logs" / f"{name}.log"
        super().__init__(name, "fit", cfg or {"name": name}, config, log)
        self.code = code

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code, str(self.config)]


# ----- config edits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "interval", "scale", "want_steps", "want_interval"),
    [
        (300, 300, 0.5, 150, 150),  # both scaled: validation stays at the end
        (300, 300, 0.0123, 4, 4),  # 3.69 rounds to 4
        (300, 300, 0.005, 2, 2),  # 1.5 -> 2
        (300, 300, 0.001, 2, 2),  # 0.3 would round to 0: floor of 2 steps
        (500, 100, 0.5, 250, 100),  # an interval below max_steps is kept
        (500, 100, 0.1, 50, 50),  # ... and clamped when the run gets shorter
        (500, None, 0.1, 50, 50),  # no interval: validate at the end
    ],
)
def test_scale_steps(steps: int, interval: int | None, scale: float, want_steps: int, want_interval: int) -> None:
    cfg = {"trainer": {"max_steps": steps, "val_check_interval": interval}}
    scale_steps(cfg, scale)
    assert cfg["trainer"] == {"max_steps": want_steps, "val_check_interval": want_interval}


def test_callbacks_returns_live_init_args() -> None:
    cfg = load_config(CONFIGS / "stage1.yaml")
    selections = callbacks(cfg, "HeadSelectionCallback")
    outputs = ["selection_7to1.json", "selection_3to1.json", "selection_best_layer.json"]
    assert [s["output"] for s in selections] == outputs
    for s in selections:
        s["seed"] = 17
    in_cfg = [c["init_args"]["seed"] for c in cfg["trainer"]["callbacks"] if "HeadSelection" in c["class_path"]]
    assert in_cfg == [17, 17, 17]
    assert len(callbacks(cfg, "ExportStudent")) == 1 and callbacks(cfg, "NoSuchCallback") == []


def test_callbacks_without_init_args_or_callbacks() -> None:
    cfg = {"trainer": {"callbacks": [{"class_path": "a.b.ExportStudent"}]}}
    callbacks(cfg, "ExportStudent")[0]["dirpath"] = "x"
    assert cfg["trainer"]["callbacks"][0]["init_args"] == {"dirpath": "x"}
    assert callbacks({"trainer": {}}, "ExportStudent") == []


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_set_run_dir_sends_logs_and_export_to_the_run_dir(tmp_path, stage: str) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    cfg = load_config(CONFIGS / f"{stage}.yaml")
    run_dir = tmp_path / "seed3" / "plan" / stage
    set_run_dir(cfg, run_dir)
    init = cfg["trainer"]["logger"]["init_args"]
    assert init == {"save_dir": str(run_dir.parent), "name": stage, "version": ""}
    # The logger writes into run_dir itself (no version_N folder): last_scalars reads exactly there.
    assert Path(TensorBoardLogger(**init).log_dir) == run_dir
    assert [e["dirpath"] for e in callbacks(cfg, "ExportStudent")] == [str(run_dir / "student")]


# ----- jobs -----------------------------------------------------------------------------------------------
def test_run_jobs_writes_the_config_first_and_logs_the_output(tmp_path) -> None:
    cfg = {"trainer": {"max_steps": 3}, "model": {"init_args": {"plan": {"method": "all_la"}}}}
    code = (
        "import os, sys; print(open(sys.argv[1]).read()); print('cwd', os.getcwd()); "
        "print('env', os.environ['PYTHONUNBUFFERED'], os.environ['OMP_NUM_THREADS']); "
        "print('oops', file=sys.stderr)"
    )
    job = Script(tmp_path, "show", code, cfg)
    seconds = run_jobs([job])
    assert set(seconds) == {"show"} and seconds["show"] > 0
    assert yaml.safe_load(job.config.read_text()) == cfg
    log = job.log.read_text()
    assert yaml.safe_load(log.split("\ncwd ")[0]) == cfg  # the job read its config: it was there before it ran
    assert f"cwd {ROOT}" in log and "env 1 " in log
    assert "oops" in log  # stderr goes to the same log


def test_run_jobs_runs_jobs_side_by_side(tmp_path) -> None:
    jobs = [Script(tmp_path, f"sleep{i}", "import time; time.sleep(2)") for i in range(2)]
    start = time.perf_counter()
    seconds = run_jobs(jobs, parallel=2)
    elapsed = time.perf_counter() - start
    # One after the other takes >= 4 s; side by side 2 s plus the runner's 0.5 s polling and start-up
    # (a 1 s margin for interpreter start-up on a loaded 2-core machine).
    assert elapsed < 3.5, elapsed
    assert set(seconds) == {"sleep0", "sleep1"} and all(s >= 2.0 for s in seconds.values())


def test_run_jobs_one_at_a_time(tmp_path) -> None:
    # Each job records when it ran; with parallel=1 the second starts after the first ended.
    code = "import sys, time; t = time.time(); time.sleep(0.3); print(t, time.time())"
    jobs = [Script(tmp_path, f"j{i}", code) for i in range(2)]
    run_jobs(jobs, parallel=1)
    (_, end0), (start1, _) = (map(float, j.log.read_text().split()) for j in jobs)
    assert start1 >= end0


def test_shared_slots_bound_the_jobs_of_several_callers_together(tmp_path) -> None:
    import threading

    # Two callers (two seeds' threads) of 3 jobs each, each allowed 3 at a time, share 2 slots.
    code = "import sys, time; t = time.time(); time.sleep(0.4); print(t, time.time())"
    jobs = [[Script(tmp_path / f"seed{s}", f"j{i}", code) for i in range(3)] for s in range(2)]
    slots = threading.BoundedSemaphore(2)
    threads = [threading.Thread(target=run_jobs, args=(js, 3, slots)) for js in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = [tuple(map(float, j.log.read_text().split())) for js in jobs for j in js]
    assert len(spans) == 6
    overlap = max(sum(a <= t < b for a, b in spans) for t, _ in spans)  # jobs running when each one started
    assert overlap <= 2, spans
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)  # every slot was given back


def test_run_jobs_spreads_jobs_over_gpus(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "gpu_count", lambda: 2)
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    jobs = [Script(tmp_path, f"g{i}", code) for i in range(3)]
    run_jobs(jobs, parallel=3)
    assert [j.log.read_text().strip() for j in jobs] == ["0", "1", "0"]


def test_a_failing_job_stops_the_others(tmp_path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    sleeper = Script(tmp_path, "sleeper", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                          "time.sleep(60)")  # fmt: skip
    failing = Script(
        tmp_path,
        "failing",
        f"import os, sys, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
        "for i in range(40): print(f'line-{i:02d}')\nsys.exit(3)",
    )
    never = Script(tmp_path, "never", "pass")
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        run_jobs([sleeper, failing, never], parallel=2)
    assert time.perf_counter() - start < 10  # not waiting for the sleeper's 60 s
    msg = str(err.value)
    assert "job failing failed (exit 3)" in msg and str(failing.log) in msg
    # The end of the log (30 lines), not all of it.
    assert "line-39" in msg and "line-10" in msg and "line-09" not in msg
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert not never.config.exists()  # the queued job never started


# ----- scalars --------------------------------------------------------------------------------------------
def test_last_scalars_reads_the_last_value_of_every_tag(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(tmp_path)
    for step in range(5):
        w.add_scalar("train/loss", 10.0 - step, step, walltime=100 + step)
        w.add_scalar("val/loss", 0.5 * step, step, walltime=100 + step)
    w.close()
    # A second event file in the same folder (a resumed run) holding older points of one tag and a new tag:
    # the latest wall time wins, whatever the file order.
    w = SummaryWriter(tmp_path)
    w.add_scalar("train/loss", 123.0, 0, walltime=50)
    w.add_scalar("lr", 0.25, 0, walltime=200)
    w.close()
    sub = SummaryWriter(tmp_path / "eval")  # subfolders are other runs
    sub.add_scalar("eval/acc", 1.0, 0)
    sub.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert last_scalars(tmp_path) == {"lr": 0.25, "train/loss": 6.0, "val/loss": 2.0}


def test_last_scalars_of_an_empty_dir(tmp_path) -> None:
    assert last_scalars(tmp_path) == {}


def test_logged_steps_counts_the_steps_of_the_last_logged_point(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    assert logged_steps(tmp_path) == 0
    w = SummaryWriter(tmp_path)
    for step in (9, 19, 29):  # Lightning logs optimizer step n at n - 1
        w.add_scalar("train/loss", 1.0, step)
    w.add_scalar("val/ppl", 2.0, 34)  # validation after the 35th (last) step
    w.close()
    assert logged_steps(tmp_path) == 35
