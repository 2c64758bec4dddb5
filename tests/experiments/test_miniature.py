"""The miniature experiment's plans, the configs of its jobs, and what it refuses; no training here."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from hydrahead_lit.cli import main as cli_main
from hydrahead_lit.experiments import miniature
from hydrahead_lit.experiments.miniature import DEFAULT_TEACHER, Miniature, main, parse_args, plans
from hydrahead_lit.experiments.runner import ROOT, callbacks, load_config

ALL_PLANS = ["hydrahead_7to1", "hydrahead_3to1", "random_7to1", "layerwise_3to1", "layerwise_best", "layerwise_last",
             "all_la"]  # fmt: skip
SELECTION_FILES = {"hydrahead_7to1": "selection_7to1.json", "hydrahead_3to1": "selection_3to1.json",
                   "layerwise_best": "selection_best_layer.json"}  # fmt: skip


def make(tmp_path: Path, *extra: str) -> Miniature:
    return Miniature(parse_args(["--out", str(tmp_path / "out"), "--seed", "5", *extra]))


SMALL = ("--batch-size", "3", "--num-workers", "0", "--eval-samples", "4", "--accelerator", "cpu",
         "--steps-scale", "0.1")  # fmt: skip


# ----- plans and arguments --------------------------------------------------------------------------------
def test_plans_come_from_the_flag_then_experiment_yaml(tmp_path) -> None:
    smol = ["--configs", str(ROOT / "configs" / "smollm2"), "--teacher", str(DEFAULT_TEACHER)]
    required = ["hydrahead_7to1", "hydrahead_3to1", "random_7to1", "layerwise_3to1", "layerwise_best", "all_la"]
    assert make(tmp_path, *smol).args.plans == required  # configs/smollm2/experiment.yaml: the six
    assert make(tmp_path, *smol, "--plans", "all_la").args.plans == ["all_la"]
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "experiment.yaml").write_text("teacher: data/demo/teacher\nplans: [all_la, no_such_plan]\n")
    with pytest.raises(SystemExit, match=r"unknown plan\(s\) \['no_such_plan'\]"):
        make(tmp_path, "--configs", str(configs))


@pytest.mark.parametrize(("layers", "interleaved"), [(4, [3]), (8, [3, 7]), (2, [1])])
def test_plans(layers: int, interleaved: list[int]) -> None:
    p = plans(layers, 2, seed=11)
    assert list(p) == ALL_PLANS
    assert p["layerwise_3to1"] == {"plan": {"method": "layerwise", "fa_layers": interleaved}}
    assert p["layerwise_last"] == {"plan": {"method": "layerwise", "fa_layers": [layers - 1]}}
    # 2 layers x 2 groups cannot meet 7:1: one group is kept (3:1); 8 and 16 groups meet it exactly.
    assert p["random_7to1"] == {"plan": {"method": "random", "ratio": 7 if layers > 2 else 3, "seed": 11}}
    assert p["all_la"] == {"plan": {"method": "all_la"}}
    for name, file in SELECTION_FILES.items():
        assert p[name] == {"head_selection": file}


def test_parse_args_defaults(tmp_path) -> None:
    args = parse_args([])
    assert args.teacher is None and args.seq_len is None  # from configs/miniature/experiment.yaml
    m = make(tmp_path)
    assert m.teacher == m.model_teacher == DEFAULT_TEACHER == ROOT / "data" / "demo" / "teacher"
    assert (DEFAULT_TEACHER / "config.json").is_file()  # the bundled teacher is in the repository
    assert m.n == 256 and m.stage3_len == 512 and m.eval_lengths == [256, 512, 1024] and m.long_lengths == []
    assert m.corpus == "demo" and m.train_docs == 60000
    assert args.seed == 0 and args.seeds is None and args.plans is None and m.args.plans == ALL_PLANS
    assert args.steps_scale == 1.0 and not args.overwrite
    assert args.batch_size is None and args.num_workers is None and args.accelerator is None
    with pytest.raises(SystemExit):
        parse_args(["--plans", "no_such_plan"])


def test_parallel_jobs(tmp_path, monkeypatch) -> None:
    assert make(tmp_path, "--jobs", "3").parallel == 3
    monkeypatch.setattr(miniature, "gpu_count", lambda: 0)
    assert make(tmp_path).parallel == 1  # CPU: one run at a time
    monkeypatch.setattr(miniature, "gpu_count", lambda: 2)
    assert make(tmp_path, "--plans", "all_la", "random_7to1").parallel == 2  # GPU: every plan at once


# ----- job configs ----------------------------------------------------------------------------------------
def check_data(m: Miniature, cfg: dict, seq_len: int) -> None:
    d = cfg["data"]["init_args"]
    assert d["data_dirs"] == str(m.shared / "data" / "train") and d["val_dir"] == str(m.shared / "data" / "val")
    assert d["tokenizer"] == str(DEFAULT_TEACHER) and d["seq_len"] == seq_len
    assert d["seed"] == 5 and cfg["seed_everything"] == 5
    assert cfg["model"]["init_args"]["teacher"] == str(DEFAULT_TEACHER)


def check_run_dir(cfg: dict, run_dir: Path) -> None:
    assert cfg["trainer"]["logger"]["init_args"] == {"save_dir": str(run_dir.parent), "name": run_dir.name,
                                                     "version": ""}  # fmt: skip
    assert [e["dirpath"] for e in callbacks(cfg, "ExportStudent")] == [str(run_dir / "student")]


def test_stage1_job(tmp_path) -> None:
    m = make(tmp_path, *SMALL)
    job = m.stage1_job()
    seed_dir = (tmp_path / "out" / "seed5").resolve()
    assert (job.name, job.subcommand) == ("stage1", "fit")
    assert job.config == seed_dir / "configs" / "stage1.yaml" and job.log == seed_dir / "logs" / "stage1.log"
    cfg = job.cfg
    check_data(m, cfg, 256)
    check_run_dir(cfg, seed_dir / "stage1")
    selections = callbacks(cfg, "HeadSelectionCallback")
    assert len(selections) == 3
    for sel in selections:
        assert sel["tokenizer"] == str(DEFAULT_TEACHER) and sel["probe_length"] == 256 and sel["seed"] == 5
    # 8 groups meet both budgets exactly; the best whole layers are chosen at the 3:1 budget.
    assert {s["output"]: s["ratio"] for s in selections} == {"selection_7to1.json": 7.0, "selection_3to1.json": 3.0,
                                                             "selection_best_layer.json": 3.0}  # fmt: skip
    # The outputs stay relative (next to the TensorBoard files): stage 2 reads them from the stage-1 run dir.
    assert sorted(s["output"] for s in selections) == sorted(SELECTION_FILES.values())
    t, d = cfg["trainer"], cfg["data"]["init_args"]
    assert t["accelerator"] == "cpu" and t["max_steps"] == 30 and t["val_check_interval"] == 30
    assert d["batch_size"] == 3 and d["num_workers"] == 0


def test_without_overrides_the_config_values_stay(tmp_path) -> None:
    cfg = make(tmp_path, "--seq-len", "128").stage1_job().cfg
    assert cfg["trainer"]["accelerator"] == "auto" and cfg["trainer"]["max_steps"] == 300
    assert cfg["data"]["init_args"]["batch_size"] == 16 and cfg["data"]["init_args"]["num_workers"] == 2
    assert cfg["data"]["init_args"]["seq_len"] == 128
    assert {s["probe_length"] for s in callbacks(cfg, "HeadSelectionCallback")} == {128}


def test_stage2_jobs(tmp_path) -> None:
    m = make(tmp_path, *SMALL)
    seed_dir = m.seed_dir
    jobs = {j.name: j for j in m.stage_jobs(2, plans(4, 2, 5))}
    assert list(jobs) == [f"{p}_stage2" for p in ALL_PLANS]
    for name in ALL_PLANS:
        job = jobs[f"{name}_stage2"]
        assert job.subcommand == "fit" and job.config == seed_dir / "configs" / f"{name}_stage2.yaml"
        check_data(m, job.cfg, 256)
        check_run_dir(job.cfg, seed_dir / name / "stage2")
        model = job.cfg["model"]["init_args"]
        assert model["init_from"] == str(seed_dir / "stage1" / "student")
        if name in SELECTION_FILES:
            assert model["head_selection"] == str(seed_dir / "stage1" / SELECTION_FILES[name])
            assert model["plan"] is None
        else:
            assert model["head_selection"] is None  # the config's default selection must not win over the plan
            assert model["plan"] == plans(4, 2, 5)[name]["plan"]
    assert jobs["random_7to1_stage2"].cfg["model"]["init_args"]["plan"]["seed"] == 5


def test_stage3_jobs(tmp_path) -> None:
    m = make(tmp_path, *SMALL)
    jobs = m.stage_jobs(3, {"hydrahead_7to1": {"head_selection": "selection_7to1.json"}, "all_la": {}})
    assert [j.name for j in jobs] == ["hydrahead_7to1_stage3", "all_la_stage3"]
    for job, name in zip(jobs, ["hydrahead_7to1", "all_la"]):
        check_data(m, job.cfg, 512)  # twice the teacher's length
        check_run_dir(job.cfg, m.seed_dir / name / "stage3")
        model = job.cfg["model"]["init_args"]
        assert model["init_from"] == str(m.seed_dir / name / "stage2" / "student")
        assert "plan" not in model and "head_selection" not in model  # the plan comes with the stage-2 export
        assert "max_position_embeddings" not in model  # 512 tokens: within the teacher's 1,024 positions


def test_stage3_past_the_teacher_positions_extends_the_students(tmp_path) -> None:
    m = make(tmp_path, *SMALL, "--stage3-multiple", "8")  # 8 x 256 = 2,048 tokens, twice the teacher's positions
    (job,) = m.stage_jobs(3, {"all_la": {}})
    check_data(m, job.cfg, 2048)
    assert job.cfg["model"]["init_args"]["max_position_embeddings"] == 2048


@pytest.mark.parametrize(("seq_len", "samples", "batch"), [(256, "4", 4), (128, "100", 25)])
def test_eval_job(tmp_path, seq_len: int, samples: str, batch: int) -> None:
    m = make(tmp_path, "--seq-len", str(seq_len), "--eval-samples", samples, "--accelerator", "cpu")
    ckpt = m.seed_dir / "all_la" / "stage3" / "student"
    job = m.eval_job("all_la", ckpt, m.seed_dir)
    assert (job.name, job.subcommand) == ("eval_all_la", "test")
    assert job.config == m.seed_dir / "configs" / "eval_all_la.yaml"
    cfg = job.cfg
    assert cfg["trainer"]["accelerator"] == "cpu"
    assert cfg["trainer"]["logger"]["init_args"] == {"save_dir": str(m.seed_dir / "eval"), "name": "tensorboard",
                                                     "version": "all_la"}  # fmt: skip
    model = cfg["model"]["init_args"]
    assert model["checkpoint"] == str(ckpt) and model["name"] == "all_la"
    assert model["output_dir"] == str(m.seed_dir / "eval" / "all_la")
    assert model["lengths"] == [seq_len, 2 * seq_len, 4 * seq_len] and model["efficiency_lengths"] == [4 * seq_len]
    assert model["ppl_seq_len"] == seq_len and model["held_out_dir"] == str(m.shared / "data" / "val")
    assert model["haystack"] == "procedural" and "max_length" not in model  # within the teacher's positions
    assert model["num_samples"] == int(samples) and model["batch_size"] == batch
    assert model["seed"] == 0  # the same evaluation samples for every training seed


def test_teacher_eval_goes_where_prepare_shared_looks(tmp_path) -> None:
    m = make(tmp_path)
    job = m.eval_job("teacher", m.teacher, m.shared)
    assert job.config == m.shared / "configs" / "eval_teacher.yaml"
    assert Path(job.cfg["model"]["init_args"]["output_dir"]) == m.shared / "eval" / "teacher"


@pytest.mark.parametrize("which", ["stage1", "stage2 selection", "stage2 baseline", "stage3", "eval"])
def test_every_config_is_accepted_by_the_cli(tmp_path, capsys, monkeypatch, which: str) -> None:
    """`main.py fit|test --config <written yaml> --print_config` parses and type-checks the config (in-process,
    as tests/test_configs.py does: a subprocess per config costs ~5 s of imports on 2 cores)."""
    m = make(tmp_path, *SMALL)
    job = {
        "stage1": m.stage1_job,
        "stage2 selection": lambda: m.stage_jobs(2, {"hydrahead_7to1": plans(4, 2, 5)["hydrahead_7to1"]})[0],
        "stage2 baseline": lambda: m.stage_jobs(2, {"random_7to1": plans(4, 2, 5)["random_7to1"]})[0],
        "stage3": lambda: m.stage_jobs(3, {"all_la": {}})[0],
        "eval": lambda: m.eval_job("all_la", m.seed_dir / "all_la", m.seed_dir),
    }[which]()
    path = tmp_path / f"{job.name}.yaml"
    path.write_text(yaml.safe_dump(job.cfg, sort_keys=False))
    monkeypatch.setattr(sys, "argv", ["main.py"])  # not pytest's own arguments
    with pytest.raises(SystemExit) as exit_info:
        cli_main([job.subcommand, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    # What the CLI parsed is what was written: no key dropped, renamed or coerced.
    for key, value in job.cfg["model"]["init_args"].items():
        assert printed["model"]["init_args"][key] == value, key
    if job.subcommand == "fit":
        assert printed["data"]["init_args"]["seq_len"] == job.cfg["data"]["init_args"]["seq_len"]
        assert printed["trainer"]["max_steps"] == job.cfg["trainer"]["max_steps"]
        assert printed["seed_everything"] == 5


# ----- refusals -------------------------------------------------------------------------------------------
def teacher_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text((DEFAULT_TEACHER / "config.json").read_text())
    return path


def test_refuses_an_earlier_seed_without_overwrite(tmp_path) -> None:
    seed_dir = (tmp_path / "out" / "seed5").resolve()
    (seed_dir / "stage1").mkdir(parents=True)
    with pytest.raises(SystemExit, match=re.escape(str(seed_dir)) + ".*--overwrite"):
        main(["--out", str(tmp_path / "out"), "--seed", "5"])
    assert (seed_dir / "stage1").is_dir()  # nothing removed


def test_overwrite_removes_the_earlier_seed(tmp_path, monkeypatch) -> None:
    seed_dir = tmp_path / "out" / "seed5"
    (seed_dir / "stage1").mkdir(parents=True)
    (tmp_path / "out" / "seed6").mkdir()

    def stop(self) -> None:
        raise RuntimeError("stopped after the removal")

    monkeypatch.setattr(Miniature, "prepare_shared", stop)  # the first step after the teacher check
    with pytest.raises(RuntimeError, match="stopped"):
        main(["--out", str(tmp_path / "out"), "--seed", "5", "--overwrite"])
    assert not seed_dir.exists() and (tmp_path / "out" / "seed6").is_dir()  # only that seed


def test_refuses_another_teacher_in_the_same_out(tmp_path) -> None:
    first, second = teacher_dir(tmp_path / "t1"), teacher_dir(tmp_path / "t2")
    m = make(tmp_path, "--teacher", str(first))
    m.check_shared()
    assert json.loads((m.shared / "settings.json").read_text())["teacher"] == str(first.resolve())
    m.check_shared()  # the same teacher again: accepted
    with pytest.raises(SystemExit, match=re.escape(str(first.resolve())) + ".*choose another --out"):
        main(["--out", str(tmp_path / "out"), "--seed", "6", "--teacher", str(second)])
    assert json.loads((m.shared / "settings.json").read_text())["teacher"] == str(first.resolve())  # record unchanged


def test_refuses_a_teacher_without_config(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        main(["--out", str(tmp_path / "out"), "--teacher", str(tmp_path / "empty")])
    assert not (tmp_path / "out" / "shared" / "settings.json").exists()


def test_a_refused_teacher_leaves_the_earlier_seed_in_place(tmp_path) -> None:
    first, second = teacher_dir(tmp_path / "t1"), teacher_dir(tmp_path / "t2")
    make(tmp_path, "--teacher", str(first)).check_shared()
    seed_dir = tmp_path / "out" / "seed5"
    (seed_dir / "eval").mkdir(parents=True)
    with pytest.raises(SystemExit, match="another --out"):
        main(["--out", str(tmp_path / "out"), "--seed", "5", "--teacher", str(second), "--overwrite"])
    assert (seed_dir / "eval").is_dir()  # a refused invocation must not delete results


def test_refuses_other_shared_settings_in_the_same_out(tmp_path) -> None:
    make(tmp_path).check_shared()
    with pytest.raises(SystemExit, match=r"seq_len: 256 \(earlier\) vs 128"):
        make(tmp_path, "--seq-len", "128").check_shared()


def test_refuses_a_length_the_teacher_cannot_evaluate(tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"4 x --seq-len = 2048 .* max_position_embeddings \(1024\)"):
        make(tmp_path, "--seq-len", "512").check_shared()
    assert not (tmp_path / "out" / "shared" / "settings.json").exists()


# ----- seeds at the same time ---------------------------------------------------------------------------------
def test_parallel_seeds_needs_several_seeds(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--parallel-seeds goes with --seeds"):
        main(["--out", str(tmp_path / "out"), "--parallel-seeds"])


def test_parallel_seeds_refuse_an_earlier_seed_before_anything_runs(tmp_path, monkeypatch) -> None:
    (tmp_path / "out" / "seed1" / "stage1").mkdir(parents=True)
    monkeypatch.setattr(Miniature, "prepare_shared", lambda self: pytest.fail("prepared before the refusal"))
    with pytest.raises(SystemExit, match="seed1 holds an earlier run"):
        main(["--out", str(tmp_path / "out"), "--seeds", "0", "1", "--parallel-seeds"])
    assert (tmp_path / "out" / "seed1" / "stage1").is_dir()


def test_parallel_seeds_share_one_preparation_and_run_at_once(tmp_path, monkeypatch) -> None:
    import threading

    prepared, teacher, slots_seen = [], [], {}
    together = threading.Barrier(4, timeout=10)  # fails unless the teacher's evaluation and the seeds run together

    def run(self) -> dict:
        together.wait()
        assert self.shared_ready  # the seeds do not prepare (or verify) the shared data again
        assert self.teacher_done is not None  # and wait for the teacher's row before their reports
        assert self.slots is slots_seen.setdefault("slots", self.slots) is not None  # one job budget for all seeds
        return {"seed": self.args.seed}

    def evaluate_teacher(self) -> None:
        together.wait()
        teacher.append(self.args.seed)

    monkeypatch.setattr(Miniature, "prepare_shared", lambda self: prepared.append(self.args.seed))
    monkeypatch.setattr(Miniature, "evaluate_teacher", evaluate_teacher)
    monkeypatch.setattr(Miniature, "run", run)
    args = parse_args(["--out", str(tmp_path / "out"), "--seeds", "0", "1", "2", "--parallel-seeds"])
    assert miniature._parallel_seeds(args) == {s: {"seed": s} for s in (0, 1, 2)}
    assert prepared == [0] and teacher == [0]


def test_parallel_seeds_name_every_failing_seed_after_the_others_finish(tmp_path, monkeypatch, capsys) -> None:
    finished = []

    def run(self) -> dict:
        if self.args.seed in (1, 2):
            raise RuntimeError(f"job of seed {self.args.seed} failed")
        finished.append(self.args.seed)
        return {"seed": self.args.seed}

    monkeypatch.setattr(Miniature, "prepare_shared", lambda self: None)
    monkeypatch.setattr(Miniature, "evaluate_teacher", lambda self: None)
    monkeypatch.setattr(Miniature, "run", run)
    args = parse_args(["--out", str(tmp_path / "out"), "--seeds", "0", "1", "2", "--parallel-seeds"])
    with pytest.raises(RuntimeError, match=r"seed\(s\) \[1, 2\] failed"):
        miniature._parallel_seeds(args)
    assert finished == [0]
    out = capsys.readouterr().out
    assert "[seed 1] failed: RuntimeError: job of seed 1 failed" in out and "[seed 2] failed" in out


# ----- resuming an earlier run --------------------------------------------------------------------------------
def test_resume_keeps_finished_steps_and_moves_the_leftovers_of_unfinished_ones(tmp_path) -> None:
    import yaml

    from hydrahead_lit.experiments.runner import job_outputs

    m = make(tmp_path, *SMALL, "--resume")
    done, failed = m.stage_jobs(2, {"hydrahead_7to1": {"head_selection": "selection_7to1.json"}, "all_la": {}})
    for job in (done, failed):  # what run_jobs wrote when the earlier run started them
        job.config.parent.mkdir(parents=True, exist_ok=True)
        job.config.write_text(yaml.safe_dump(job.cfg, sort_keys=False))
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.log.write_text("earlier attempt\n")
    export, _ = job_outputs(done.cfg)
    export.parent.mkdir(parents=True)
    export.write_text("{}")
    _, run_dir = job_outputs(failed.cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "events.out.tfevents.1").write_text("half a run")
    assert [j.name for j in m._unfinished([done, failed])] == ["all_la_stage2"]
    assert m.kept == ["hydrahead_7to1_stage2"] and export.is_file()
    (moved,) = (m.seed_dir / "failed").iterdir()
    assert moved.name.startswith("all_la_stage2.") and not run_dir.exists() and not failed.log.exists()
    assert (moved / "stage2" / "events.out.tfevents.1").read_text() == "half a run"
    assert (moved / "all_la_stage2.log").read_text() == "earlier attempt\n"  # nothing of the earlier run is lost


def test_resume_refuses_a_finished_step_whose_config_changed(tmp_path) -> None:
    import yaml

    from hydrahead_lit.experiments.runner import job_outputs

    (job,) = make(tmp_path, *SMALL).stage_jobs(3, {"all_la": {}})
    job.config.parent.mkdir(parents=True)
    job.config.write_text(yaml.safe_dump(job.cfg))
    export, _ = job_outputs(job.cfg)
    export.parent.mkdir(parents=True)
    export.write_text("{}")
    m = make(tmp_path, *SMALL, "--resume", "--steps-scale", "0.5")  # stage 3 would now run fewer steps
    (again,) = m.stage_jobs(3, {"all_la": {}})
    with pytest.raises(SystemExit, match="all_la_stage3 finished with another config .* pass --overwrite"):
        m._unfinished([again])
    with pytest.raises(SystemExit):
        parse_args(["--resume", "--overwrite"])


# ----- the teacher's screening --------------------------------------------------------------------------------
def _fake_screen(accuracy: dict[str, float], ran: list | None = None):
    """A run_jobs that writes the screening's results.json as EvalModule would (scores in percent)."""

    def run(jobs, parallel=1, slots=None):
        (job,) = jobs
        if ran is not None:
            ran.append(job)
        m = job.cfg["model"]["init_args"]
        n = str(m["lengths"][0])
        out = Path(m["output_dir"])
        out.mkdir(parents=True)
        ruler = {t: {n: {"score": 100 * accuracy[t]}} for t in m["tasks"]}
        (out / "results.json").write_text(json.dumps({"ruler": ruler}))
        return {job.name: 1.0}

    return run


def test_screening_keeps_the_tasks_the_teacher_passes_at_the_shortest_length(tmp_path, monkeypatch) -> None:
    m = make(tmp_path, *SMALL, "--min-teacher-accuracy", "0.25")
    tasks = load_config(ROOT / "configs" / "miniature" / "eval.yaml")["model"]["init_args"]["tasks"]
    accuracy = {t: 0.1 if i == 0 else 0.75 for i, t in enumerate(tasks)}  # the first task fails
    ran = []
    monkeypatch.setattr(miniature, "run_jobs", _fake_screen(accuracy, ran))
    record = m.screen_tasks()
    assert record["length"] == 256 and record["kept"] == tasks[1:] and record["dropped"] == tasks[:1]
    screen = ran[0].cfg["model"]["init_args"]
    assert screen["lengths"] == [256] and screen["efficiency"] is False and screen["held_out_dir"] is None
    assert m.eval_job("all_la", tmp_path / "ckpt", m.seed_dir).cfg["model"]["init_args"]["tasks"] == tasks[1:]
    monkeypatch.setattr(miniature, "run_jobs", lambda *a, **k: pytest.fail("screened twice"))
    assert m.screen_tasks() == record  # made once per experiment directory


def test_screening_refuses_a_teacher_that_passes_nothing(tmp_path, monkeypatch) -> None:
    m = make(tmp_path, *SMALL, "--min-teacher-accuracy", "0.9")
    tasks = load_config(ROOT / "configs" / "miniature" / "eval.yaml")["model"]["init_args"]["tasks"]
    monkeypatch.setattr(miniature, "run_jobs", _fake_screen(dict.fromkeys(tasks, 0.85)))
    with pytest.raises(SystemExit, match="passes none of the tasks at 256 tokens"):
        m.screen_tasks()
    assert not m.tasks_record.exists()
    with pytest.raises(SystemExit, match=r"min_teacher_accuracy must lie in \[0, 1\]"):
        make(tmp_path, "--min-teacher-accuracy", "2")
