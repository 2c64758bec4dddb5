"""The paper's comparison in miniature, one seed per invocation (minutes on one H100):

    python -m hydrahead_lit.experiments.miniature --out runs/miniature --seed 0
    python -m hydrahead_lit.eval.compare runs/miniature/* -o docs/miniature/

1. `<out>/shared` (made once, reused by every seed): the procedural demo corpus prepared at the teacher's
   length and the teacher's evaluation (`shared/eval/teacher`). The teacher is the bundled demo teacher
   (`data/demo/teacher`, pre-trained by `configs/demo/pretrain_teacher.yaml`) unless `--teacher DIR`.
2. `<out>/seed<N>`: stage 1 once, with three head selections from the same scores (HydraHead 7:1 and 3:1,
   the best whole layer); then stages 2 and 3 on the same budget for every plan of `plans()` (run side by
   side, one process each); then every student evaluated with `configs/miniature/eval.yaml`.

Every step is a `python main.py fit|test --config ...` command of the project: the configs run are saved in
`<out>/seed<N>/configs` (and `shared/configs`), their logs in `.../logs`. The seed sets training (data order,
initialisation, the random plan, selection probes); evaluation samples are the same for every seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from hydrahead_lit.experiments.runner import (
    ROOT,
    Job,
    callbacks,
    gpu_count,
    last_scalars,
    load_config,
    run_jobs,
    scale_steps,
    set_run_dir,
)

CONFIG_DIR = ROOT / "configs" / "miniature"
DEFAULT_OUT = Path("runs/miniature")
DEFAULT_TEACHER = ROOT / "data" / "demo" / "teacher"


def plans(num_layers: int, seed: int) -> dict[str, dict[str, Any]]:
    """Stage-2 model arguments of every compared plan (selection files are relative to the stage-1 run)."""
    interleaved = list(range(3, num_layers, 4)) or [num_layers - 1]  # every 4th layer keeps FA: 3:1 layer-wise
    return {
        "hydrahead_7to1": {"head_selection": "selection_7to1.json"},
        "hydrahead_3to1": {"head_selection": "selection_3to1.json"},
        "random_7to1": {"plan": {"method": "random", "ratio": 7, "seed": seed}},
        "layerwise_3to1": {"plan": {"method": "layerwise", "fa_layers": interleaved}},
        "layerwise_best": {"head_selection": "selection_best_layer.json"},
        "layerwise_last": {"plan": {"method": "layerwise", "fa_layers": [num_layers - 1]}},
        "all_la": {"plan": {"method": "all_la"}},
    }


PLAN_NAMES = tuple(plans(4, 0))


class Miniature:
    """Paths and configs of one invocation; `run()` does the work."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out.resolve()
        self.shared = self.out / "shared"
        self.seed_dir = self.out / f"seed{args.seed}"
        self.data = self.shared / "data"
        self.teacher = args.teacher.resolve()
        self.n = args.seq_len
        self.parallel = args.jobs or (len(args.plans) if gpu_count() else 1)
        self.teacher_config: dict[str, Any] = {}  # its config.json, read by check_shared()
        self.timings: dict[str, float] = {}
        self.stages: dict[str, dict[str, float]] = {}

    # ----- configs ------------------------------------------------------------------------------------
    def _data(self, cfg: dict, seq_len: int, tokenizer: str | Path) -> None:
        d = cfg["data"]["init_args"]
        d.update(data_dirs=str(self.data / "train"), val_dir=str(self.data / "val"), tokenizer=str(tokenizer),
                 seq_len=seq_len)  # fmt: skip
        if "seed" in d:
            d["seed"] = self.args.seed
        if self.args.num_workers is not None:
            d["num_workers"] = self.args.num_workers
        if self.args.batch_size is not None:
            d["batch_size"] = self.args.batch_size

    def _stage(self, name: str, run_dir: Path, seq_len: int, **model: Any) -> dict:
        cfg = load_config(CONFIG_DIR / f"{name}.yaml")
        cfg["seed_everything"] = self.args.seed
        set_run_dir(cfg, run_dir)
        scale_steps(cfg, self.args.steps_scale)
        self._data(cfg, seq_len, self.teacher)
        cfg["model"]["init_args"].update(teacher=str(self.teacher), **model)
        if self.args.accelerator:
            cfg["trainer"]["accelerator"] = self.args.accelerator
        return cfg

    def _job(self, name: str, subcommand: str, cfg: dict, where: Path) -> Job:
        return Job(name, subcommand, cfg, where / "configs" / f"{name}.yaml", where / "logs" / f"{name}.log")

    def stage1_job(self) -> Job:
        cfg = self._stage("stage1", self.seed_dir / "stage1", self.n)
        for sel in callbacks(cfg, "HeadSelectionCallback"):
            sel.update(tokenizer=str(self.teacher), probe_length=self.n, seed=self.args.seed)
        return self._job("stage1", "fit", cfg, self.seed_dir)

    def stage_jobs(self, stage: int, plan_args: dict[str, dict[str, Any]]) -> list[Job]:
        jobs = []
        for name, model in plan_args.items():
            run = self.seed_dir / name / f"stage{stage}"
            if stage == 2:
                selection = model.get("head_selection")
                cfg = self._stage("stage2", run, self.n, init_from=str(self.seed_dir / "stage1" / "student"),
                                  head_selection=selection and str(self.seed_dir / "stage1" / selection),
                                  plan=model.get("plan"))  # fmt: skip
            else:
                cfg = self._stage("stage3", run, 2 * self.n, init_from=str(self.seed_dir / name / "stage2" / "student"))
            jobs.append(self._job(f"{name}_stage{stage}", "fit", cfg, self.seed_dir))
        return jobs

    def eval_job(self, name: str, checkpoint: Path, where: Path) -> Job:
        cfg = load_config(CONFIG_DIR / "eval.yaml")
        cfg["trainer"]["logger"]["init_args"].update(save_dir=str(where / "eval"), name="tensorboard", version=name)
        if self.args.accelerator:
            cfg["trainer"]["accelerator"] = self.args.accelerator
        m = cfg["model"]["init_args"]
        m.update(checkpoint=str(checkpoint), name=name, output_dir=str(where / "eval" / name),
                 lengths=[self.n, 2 * self.n, 4 * self.n], efficiency_lengths=[4 * self.n], ppl_seq_len=self.n,
                 held_out_dir=str(self.data / "val"))  # fmt: skip
        if self.args.eval_samples is not None:
            m["num_samples"] = self.args.eval_samples
            m["batch_size"] = min(m["batch_size"], self.args.eval_samples)
        return self._job(f"eval_{name}", "test", cfg, where)

    # ----- the run ------------------------------------------------------------------------------------
    def _timed(self, phase: str, jobs: list[Job], parallel: int = 1) -> None:
        start = time.perf_counter()
        print(f"[{phase}] {len(jobs)} job(s), {min(parallel, len(jobs))} at a time", flush=True)
        run_jobs(jobs, parallel)
        self.timings[phase] = time.perf_counter() - start

    def check_shared(self) -> None:
        """The teacher must be a model directory, and the shared settings those of every earlier seed in `--out`
        (the seeds share one corpus and one teacher evaluation)."""
        if not (self.teacher / "config.json").is_file():
            raise SystemExit(f"--teacher {self.teacher} is not a model directory (no config.json)")
        self.teacher_config = json.loads((self.teacher / "config.json").read_text())
        limit = self.teacher_config.get("max_position_embeddings")
        if limit is not None and 4 * self.n > limit:  # found now, not after training, when evaluation starts
            raise SystemExit(f"evaluation at 4 x --seq-len = {4 * self.n} tokens exceeds the teacher's "
                             f"max_position_embeddings ({limit}); lower --seq-len to at most {limit // 4}")  # fmt: skip
        a = self.args
        settings = {"teacher": str(self.teacher), "seq_len": a.seq_len, "train_docs": a.train_docs,
                    "eval_samples": a.eval_samples}  # fmt: skip
        record = self.shared / "settings.json"
        if record.is_file():
            earlier = json.loads(record.read_text())
            diff = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
            if diff:
                said = ", ".join(f"{k}: {old} (earlier) vs {new}" for k, (old, new) in diff.items())
                raise SystemExit(f"{self.out} holds seeds made with other shared settings ({said}); the seeds of one "
                                 "experiment share teacher, corpus and evaluation: choose another --out")  # fmt: skip
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(settings, indent=1) + "\n")

    def prepare_shared(self) -> None:
        from hydrahead_lit.demo import prepare_data

        start = time.perf_counter()
        prepare_data(self.shared, self.args.train_docs, 500, seq_len=self.n)
        self.timings["data"] = time.perf_counter() - start
        if not (self.shared / "eval" / "teacher" / "results.json").is_file():
            self._timed("teacher evaluation", [self.eval_job("teacher", self.teacher, self.shared)])

    def run(self) -> dict[str, Any]:
        self.check_shared()  # before anything is deleted
        if self.seed_dir.exists():
            if not self.args.overwrite:
                raise SystemExit(f"{self.seed_dir} holds an earlier run of seed {self.args.seed}; pass --overwrite "
                                 "to replace it, or choose another --out or --seed")  # fmt: skip
            shutil.rmtree(self.seed_dir)
        start = time.perf_counter()
        self.prepare_shared()
        t_seed = time.perf_counter()
        num_layers = self.teacher_config["num_hidden_layers"]
        plan_args = {k: v for k, v in plans(num_layers, self.args.seed).items() if k in self.args.plans}
        self._timed("stage 1 + head selection", [self.stage1_job()])
        self.stages["stage1"] = last_scalars(self.seed_dir / "stage1")
        for stage in (2, 3):
            self._timed(f"stage {stage}", self.stage_jobs(stage, plan_args), self.parallel)
            for name in plan_args:
                self.stages[f"{name} stage {stage}"] = last_scalars(self.seed_dir / name / f"stage{stage}")
        evals = [self.eval_job(n, self.seed_dir / n / "stage3" / "student", self.seed_dir) for n in plan_args]
        self._timed("evaluation", evals, self.parallel)
        self.timings["seed total"] = time.perf_counter() - t_seed
        self.timings["total"] = time.perf_counter() - start
        return self.report(list(plan_args))

    def report(self, names: list[str]) -> dict[str, Any]:
        from hydrahead_lit.eval.compare import compare

        runs = [self.shared / "eval" / "teacher", *(self.seed_dir / "eval" / n for n in names)]
        paths = compare(runs, self.seed_dir / "report")
        selections = {}
        for f in sorted((self.seed_dir / "stage1").glob("selection_*.json")):
            sel = json.loads(f.read_text())
            selections[f.stem] = {"chosen": sel["chosen"], "method": sel["method"], "ratio": sel["ratio"]}
        summary = {
            "seed": self.args.seed,
            "teacher": str(self.teacher),
            "selections": selections,
            "stages": self.stages,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "environment": environment(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
        }
        (self.seed_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print("\n" + Path(paths["table"]).read_text())
        for name, sel in selections.items():
            print(f"{name}: FA (layer, group) {sel['chosen']}")
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items()))
        print(f"report: {paths['table']}; summary: {self.seed_dir / 'summary.json'}")
        return summary


def environment() -> dict[str, str]:
    """Versions and device the numbers were measured with."""
    import importlib.metadata as md

    import torch

    env = {"python": platform.python_version(), "device": "cpu"}
    for pkg in ("torch", "lightning", "transformers", "triton", "flash-linear-attention"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hydrahead_lit.experiments.miniature", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="experiment directory (default runs/miniature)")
    p.add_argument("--seed", type=int, default=0, help="training seed of this invocation")
    p.add_argument(
        "--teacher", type=Path, default=DEFAULT_TEACHER, help="teacher directory (default: the demo teacher)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same seed")
    p.add_argument("--plans", nargs="+", default=list(PLAN_NAMES), choices=PLAN_NAMES,
                   help="plans to compare (default: all)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: all plans on GPU, 1 on CPU)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=256,
        help="the teacher's training length (the demo teacher's: 256); eval at 1x, 2x, 4x",
    )
    p.add_argument("--train-docs", type=int, default=60000, help="procedural training documents")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every run's max_steps (tests: small)")
    p.add_argument("--batch-size", type=int, default=None, help="override every run's batch size (tests: small)")
    p.add_argument("--num-workers", type=int, default=None, help="override data loader workers")
    p.add_argument("--eval-samples", type=int, default=None, help="samples per task x length (config: 50)")
    p.add_argument("--accelerator", default=None, help="trainer accelerator (configs: auto)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return Miniature(parse_args(argv)).run()


if __name__ == "__main__":
    main()
