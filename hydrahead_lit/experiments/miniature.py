"""The paper's comparison on one teacher and corpus, one seed per invocation (or several with --seeds):

    python -m hydrahead_lit.experiments.miniature --out runs/miniature --seed 0          # the demo teacher
    python -m hydrahead_lit.experiments.miniature --configs configs/smollm2 --teacher SmolLM2.gguf \\
        --out runs/smollm2 --seeds 0 1 2                                               # + report of all seeds
    python -m hydrahead_lit.eval.compare runs/miniature/* -o docs/miniature/

A config set (`--configs`, default configs/miniature) holds stage1/2/3.yaml, eval.yaml and experiment.yaml;
the last gives the defaults of this command for that set (teacher, corpus, lengths), each overridable here.

1. `<out>/shared` (made once, reused by every seed): a `.gguf` teacher imported (float32, `shared/teacher`),
   the corpus prepared with the teacher's own tokenizer (procedural demo documents, Python sources and docs
   of the installed packages, or `--data`/`--val-data`) at the training length, the teacher's screening (every
   task at the shortest length: the tasks it passes are the ones evaluated, `shared/tasks.json`) and its
   evaluation.
2. `<out>/seed<N>`: stage 1 once, with three head selections from the same scores (HydraHead 7:1 and 3:1,
   the best whole layers at the 3:1 budget); then stages 2 and 3 on the same budget for every plan of
   experiment.yaml's `plans` (side by side on a GPU, one process each); then every student evaluated with
   eval.yaml. `--resume` continues a seed that stopped part-way; `--overwrite` starts it again.

Lengths are multiples of the training length `seq_len` (experiment.yaml; `auto` = the teacher's
max_position_embeddings over the largest evaluation multiple): stage 3 at `stage3_multiple`, evaluation at
`eval_multiples` (within the teacher's positions) and `long_eval_multiples` (past them: what each model
gives there, the teacher included). Budgets in KV groups round down (`budget`): never more FA than the
ratio allows. Every step is a `python main.py fit|test --config ...` command of the project, saved in
`<out>/seed<N>/configs` (and `shared/configs`) with its log in `.../logs`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydrahead_lit.experiments.runner import (
    ROOT,
    Job,
    callbacks,
    gpu_count,
    job_outputs,
    last_scalars,
    load_config,
    run_jobs,
    scale_steps,
    set_run_dir,
)

DEFAULT_CONFIGS = ROOT / "configs" / "miniature"
DEFAULT_OUT = Path("runs/miniature")
DEFAULT_TEACHER = ROOT / "data" / "demo" / "teacher"
# A task the teacher gets right less often than this at the shortest length is left out of the evaluation: the
# students' scores on it would measure the task, not the conversion.
DEFAULT_MIN_TEACHER_ACCURACY = 0.25
EXPERIMENT_KEYS = ("teacher", "corpus", "corpus_mb", "train_docs", "seq_len", "stage3_multiple", "eval_multiples",
                   "long_eval_multiples", "efficiency_multiples", "plans", "min_teacher_accuracy")  # fmt: skip


def budget(total_groups: int, ratio: float) -> tuple[int, float]:
    """(FA KV groups, exact LA:FA ratio) for a nominal `ratio`: floor(total / (ratio + 1)) groups, at least one.

    90 groups at 7:1 would need 11.25: 11 are kept (LA:FA 79:11 = 7.18:1, 12.2% of the KV cache); at 3:1,
    22 (68:22 = 3.09:1). The exact ratio is what the selection and the random plan are given.
    """
    n = max(1, math.floor(total_groups / (ratio + 1) + 1e-9))
    return n, float(ratio) if n * (ratio + 1) == total_groups else (total_groups - n) / n


def plans(num_layers: int, num_kv_groups: int, seed: int) -> dict[str, dict[str, Any]]:
    """Stage-2 model arguments of every compared plan (selection files are relative to the stage-1 run)."""
    interleaved = list(range(3, num_layers, 4)) or [num_layers - 1]  # every 4th layer keeps FA: 3:1 layer-wise
    ratio7 = budget(num_layers * num_kv_groups, 7)[1]
    return {
        "hydrahead_7to1": {"head_selection": "selection_7to1.json"},
        "hydrahead_3to1": {"head_selection": "selection_3to1.json"},
        "random_7to1": {"plan": {"method": "random", "ratio": ratio7, "seed": seed}},
        "layerwise_3to1": {"plan": {"method": "layerwise", "fa_layers": interleaved}},
        "layerwise_best": {"head_selection": "selection_best_layer.json"},
        "layerwise_last": {"plan": {"method": "layerwise", "fa_layers": [num_layers - 1]}},
        "all_la": {"plan": {"method": "all_la"}},
    }


PLAN_NAMES = tuple(plans(4, 2, 0))


def experiment_defaults(config_dir: Path) -> dict[str, Any]:
    path = config_dir / "experiment.yaml"
    if not path.is_file():
        raise SystemExit(f"--configs {config_dir} has no experiment.yaml (see configs/miniature/experiment.yaml)")
    exp = load_config(path) or {}
    unknown = sorted(set(exp) - set(EXPERIMENT_KEYS))
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {unknown}; known: {', '.join(EXPERIMENT_KEYS)}")
    return exp


class Miniature:
    """Settings, paths and job configs of one seed; `run()` does the work."""

    def __init__(self, args: argparse.Namespace) -> None:
        from hydrahead_lit.teachers import is_gguf, teacher_config_dict

        self.args = a = args
        self.configs = a.configs.resolve()
        exp = experiment_defaults(self.configs)
        pick = lambda key: getattr(a, key) if getattr(a, key) is not None else exp.get(key)  # noqa: E731
        self.out = a.out.resolve()
        self.shared = self.out / "shared"
        self.seed_dir = self.out / f"seed{a.seed}"
        self.data = self.shared / "data"
        teacher = pick("teacher")
        if teacher is None:
            raise SystemExit(f"{self.configs / 'experiment.yaml'} names no teacher: pass --teacher DIR or FILE.gguf")
        self.teacher = ROOT / teacher if not Path(teacher).is_absolute() and a.teacher is None else Path(teacher)
        self.teacher = self.teacher.expanduser().resolve()
        try:
            self.teacher_config = teacher_config_dict(self.teacher)
        except ValueError as e:
            raise SystemExit(f"--teacher: {e}") from None
        # The path stage jobs read: a GGUF is imported once into shared/teacher (plain safetensors).
        self.model_teacher = self.shared / "teacher" if is_gguf(self.teacher) else self.teacher
        c = self.teacher_config
        self.num_layers, self.num_kv = c["num_hidden_layers"], c.get("num_key_value_heads") or c["num_attention_heads"]
        self.positions = int(c["max_position_embeddings"])
        self.corpus = "files" if a.data else (pick("corpus") or "demo")
        self.eval_mult = list(pick("eval_multiples") or [1, 2, 4])
        self.long_mult = list(pick("long_eval_multiples") or [])
        self.eff_mult = list(pick("efficiency_multiples") or [max(self.eval_mult)])
        seq_len = pick("seq_len") or "auto"
        self.n = self.positions // max(self.eval_mult) if seq_len == "auto" else int(seq_len)
        self.stage3_len = int(pick("stage3_multiple") or 2) * self.n
        self.corpus_mb, self.train_docs = float(pick("corpus_mb") or 64), int(pick("train_docs") or 60000)
        a.plans = list(pick("plans") or PLAN_NAMES)
        unknown = sorted(set(a.plans) - set(PLAN_NAMES))
        if unknown:
            raise SystemExit(f"{self.configs / 'experiment.yaml'}: unknown plan(s) {unknown}; known: {PLAN_NAMES}")
        floor = pick("min_teacher_accuracy")
        self.min_teacher_accuracy = DEFAULT_MIN_TEACHER_ACCURACY if floor is None else float(floor)
        if not 0.0 <= self.min_teacher_accuracy <= 1.0:
            raise SystemExit(f"min_teacher_accuracy must lie in [0, 1], got {self.min_teacher_accuracy}")
        self.parallel = a.jobs or (len(a.plans) if gpu_count() else 1)
        self.timings: dict[str, float] = {}
        self.shared_ready = False  # set when another seed of the same invocation prepared `shared` already
        self.teacher_done: Future | None = None  # the teacher's evaluation, when it runs beside the seeds
        self.kept: list[str] = []  # jobs of an earlier run kept by --resume
        self.slots: threading.Semaphore | None = None  # shared by seeds run at the same time: jobs in all
        self.stages: dict[str, dict[str, float]] = {}

    # ----- lengths and budgets -------------------------------------------------------------------------
    @property
    def eval_lengths(self) -> list[int]:
        return [m * self.n for m in self.eval_mult]

    @property
    def long_lengths(self) -> list[int]:
        return [m * self.n for m in self.long_mult]

    def budgets(self) -> dict[str, dict[str, float]]:
        total = self.num_layers * self.num_kv
        return {f"{r}:1": dict(zip(("fa_groups", "ratio"), budget(total, r)), total_groups=total) for r in (7, 3)}

    # ----- configs ------------------------------------------------------------------------------------
    def _data(self, cfg: dict, seq_len: int) -> None:
        d = cfg["data"]["init_args"]
        d.update(data_dirs=str(self.data / "train"), val_dir=str(self.data / "val"), tokenizer=str(self.model_teacher),
                 seq_len=seq_len)  # fmt: skip
        if "seed" in d:
            d["seed"] = self.args.seed
        if self.args.num_workers is not None:
            d["num_workers"] = self.args.num_workers
        if self.args.batch_size is not None:
            d["batch_size"] = self.args.batch_size

    def _stage(self, name: str, run_dir: Path, seq_len: int, **model: Any) -> dict:
        cfg = load_config(self.configs / f"{name}.yaml")
        cfg["seed_everything"] = self.args.seed
        set_run_dir(cfg, run_dir)
        scale_steps(cfg, self.args.steps_scale)
        self._data(cfg, seq_len)
        cfg["model"]["init_args"].update(teacher=str(self.model_teacher), **model)
        if self.args.accelerator:
            cfg["trainer"]["accelerator"] = self.args.accelerator
        return cfg

    def _job(self, name: str, subcommand: str, cfg: dict, where: Path) -> Job:
        return Job(name, subcommand, cfg, where / "configs" / f"{name}.yaml", where / "logs" / f"{name}.log")

    def stage1_job(self) -> Job:
        cfg = self._stage("stage1", self.seed_dir / "stage1", self.n)
        total = self.num_layers * self.num_kv
        for sel in callbacks(cfg, "HeadSelectionCallback"):
            sel.update(tokenizer=str(self.model_teacher), probe_length=self.n, seed=self.args.seed,
                       ratio=budget(total, float(sel.get("ratio", 7.0)))[1])  # the config's ratio, rounded  # fmt: skip
            if self.args.probes is not None:
                sel.update(
                    num_probes=self.args.probes, probe_batch_size=min(sel.get("probe_batch_size", 8), self.args.probes)
                )
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
                # Rows past the teacher's positions extend the student's (RoPE extrapolates; stage 3 trains there).
                longer = {"max_position_embeddings": self.stage3_len} if self.stage3_len > self.positions else {}
                cfg = self._stage("stage3", run, self.stage3_len,
                                  init_from=str(self.seed_dir / name / "stage2" / "student"), **longer)  # fmt: skip
            jobs.append(self._job(f"{name}_stage{stage}", "fit", cfg, self.seed_dir))
        return jobs

    def eval_job(self, name: str, checkpoint: Path, where: Path, screen: bool = False) -> Job:
        """An evaluation job: the full one (the tasks the teacher passed the screening on), or with `screen` the
        teacher's screening (every task of eval.yaml at the shortest length, nothing else)."""
        cfg = load_config(self.configs / "eval.yaml")
        cfg["trainer"]["logger"]["init_args"].update(save_dir=str(where / "eval"), name="tensorboard", version=name)
        if self.args.accelerator:
            cfg["trainer"]["accelerator"] = self.args.accelerator
        m = cfg["model"]["init_args"]
        lengths = self.eval_lengths + self.long_lengths
        m.update(checkpoint=str(checkpoint), name=name, output_dir=str(where / "eval" / name), lengths=lengths,
                 efficiency_lengths=[e * self.n for e in self.eff_mult], ppl_seq_len=self.n,
                 held_out_dir=str(self.data / "val"),
                 haystack="procedural" if self.corpus == "demo" else str(self.data / "val"))  # fmt: skip
        if max(lengths + m["efficiency_lengths"]) > self.positions:  # past the teacher's positions, on purpose
            m["max_length"] = max(lengths + m["efficiency_lengths"])
        if self.args.eval_samples is not None:
            m["num_samples"] = self.args.eval_samples
            m["batch_size"] = min(m["batch_size"], self.args.eval_samples)
        if screen:
            m.update(lengths=[min(self.eval_lengths)], efficiency=False, held_out_dir=None)
            m.pop("max_length", None)
        elif self.tasks_record.is_file():
            m["tasks"] = json.loads(self.tasks_record.read_text())["kept"]
        return self._job(f"eval_{name}", "test", cfg, where)

    @property
    def tasks_record(self) -> Path:
        return self.shared / "tasks.json"

    def screen_tasks(self) -> dict[str, Any]:
        """Evaluate the teacher on every task at the shortest length first; keep the tasks it passes (accuracy at
        least `min_teacher_accuracy`) for every evaluation of the experiment. Written to shared/tasks.json."""
        if self.tasks_record.is_file():
            return json.loads(self.tasks_record.read_text())
        job = self.eval_job("teacher_screen", self.model_teacher, self.shared, screen=True)
        self._timed("teacher screening", [job])
        n = job.cfg["model"]["init_args"]["lengths"][0]
        ruler = json.loads((Path(job.cfg["model"]["init_args"]["output_dir"]) / "results.json").read_text())["ruler"]
        tasks = job.cfg["model"]["init_args"].get("tasks") or list(ruler)
        scores = {t: float(ruler[t][str(n)]["score"]) / 100 for t in tasks}  # results hold percentages
        kept = [t for t, v in scores.items() if v >= self.min_teacher_accuracy]
        if not kept:
            raise SystemExit(f"the teacher passes none of the tasks at {n} tokens (accuracy {scores}, needed "
                             f">= {self.min_teacher_accuracy}): the evaluation would measure nothing; lower "
                             "min_teacher_accuracy or choose other tasks in eval.yaml")  # fmt: skip
        record = {"length": n, "teacher_accuracy": scores, "min_teacher_accuracy": self.min_teacher_accuracy,
                  "kept": kept, "dropped": [t for t in scores if t not in kept]}  # fmt: skip
        self.tasks_record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[teacher screening] at {n} tokens: {scores}; kept {kept}", flush=True)
        return record

    # ----- the run ------------------------------------------------------------------------------------
    def _timed(self, phase: str, jobs: list[Job], parallel: int = 1) -> None:
        start = time.perf_counter()
        if self.args.resume:
            jobs = self._unfinished(jobs)
        print(f"[seed {self.args.seed}: {phase}] {len(jobs)} job(s), {min(parallel, len(jobs))} at a time", flush=True)
        run_jobs(jobs, parallel, self.slots)
        self.timings[phase] = time.perf_counter() - start

    def _unfinished(self, jobs: list[Job]) -> list[Job]:
        """With --resume: the jobs still to run. A finished job (its export or results in place) is kept when it
        ran with the config it would run with now; an unfinished one's leftovers move to <seed>/failed/."""
        todo = []
        for job in jobs:
            output, run_dir = job_outputs(job.cfg)
            if output.is_file():
                recorded = load_config(job.config) if job.config.is_file() else None
                if recorded != job.cfg:
                    raise SystemExit(
                        f"--resume: {job.name} finished with another config than it would run with now "
                        f"({job.config}); pass --overwrite to run seed {self.args.seed} again"
                    )
                print(f"  kept {job.name}: {output.parent}", flush=True)
                self.kept.append(job.name)
                continue
            stale = [q for q in (run_dir, job.log) if q.exists()]
            if stale:
                dest = self.seed_dir / "failed" / f"{job.name}.{time.strftime('%Y%m%d-%H%M%S')}"
                dest.mkdir(parents=True)
                for q in stale:
                    q.rename(dest / q.name)
                print(f"  {job.name} did not finish earlier: its leftovers are in {dest}", flush=True)
            todo.append(job)
        return todo

    def settings(self) -> dict[str, Any]:
        a = self.args
        corpus: dict[str, Any] = {"corpus": self.corpus}
        if self.corpus == "files":
            resolved = lambda paths: [str(Path(p).resolve()) for p in paths or []]  # noqa: E731
            corpus.update(data=resolved(a.data), val_data=resolved(a.val_data))
        elif self.corpus == "python":
            corpus["corpus_mb"] = self.corpus_mb
        else:
            corpus["train_docs"] = self.train_docs
        return {"teacher": str(self.teacher), "seq_len": self.n, "eval_samples": a.eval_samples, **corpus,
                "stage3_len": self.stage3_len, "lengths": self.eval_lengths + self.long_lengths,
                "min_teacher_accuracy": self.min_teacher_accuracy}  # fmt: skip

    def check_shared(self) -> None:
        """Lengths the teacher can be evaluated at, and the shared settings those of every earlier seed in `--out`
        (the seeds share one corpus and one teacher evaluation)."""
        top = max(self.eval_lengths)
        if top > self.positions:  # found now, not after training, when evaluation starts
            raise SystemExit(f"evaluation at {max(self.eval_mult)} x --seq-len = {top} tokens exceeds the teacher's "
                             f"max_position_embeddings ({self.positions}); lower --seq-len to at most "
                             f"{self.positions // max(self.eval_mult)}")  # fmt: skip
        if self.corpus == "files" and not self.args.val_data:
            raise SystemExit("--data needs --val-data: held-out files for perplexity, validation and the haystack")
        settings = self.settings()
        record = self.shared / "settings.json"
        if record.is_file():
            earlier = json.loads(record.read_text())
            diff = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
            if diff:
                said = ", ".join(f"{k}: {old} (earlier) vs {new}" for k, (old, new) in diff.items())
                raise SystemExit(f"{self.out} holds seeds made with other shared settings ({said}); the seeds of one "
                                 "experiment share teacher, corpus and evaluation: choose another --out")  # fmt: skip
        if not record.is_file():  # written whole or not at all (a concurrent reader never sees half of it)
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_text(json.dumps(settings, indent=1) + "\n")
            os.replace(partial, record)

    def prepare_shared(self) -> None:
        from hydrahead_lit.experiments.corpus import prepare_splits
        from hydrahead_lit.teachers import import_gguf, is_gguf

        start = time.perf_counter()
        if is_gguf(self.teacher) and not (self.model_teacher / "config.json").is_file():
            print(f"[teacher] importing {self.teacher} into {self.model_teacher}", flush=True)
            import_gguf(self.teacher, self.model_teacher, dtype="float32", overwrite=True)
        a = self.args
        prepare_splits(self.data, self.corpus, self.model_teacher, self.n, int(self.corpus_mb * 2**20),
                       (self.train_docs, 500), a.data, a.val_data, ROOT, a.prepare_workers)  # fmt: skip
        self.timings["data"] = time.perf_counter() - start
        if not self.args.parallel_seeds:
            self.evaluate_teacher()

    def evaluate_teacher(self) -> None:
        """The teacher's screening, then its row of the report; made once per experiment directory."""
        self.screen_tasks()
        if not (self.shared / "eval" / "teacher" / "results.json").is_file():
            self._timed("teacher evaluation", [self.eval_job("teacher", self.model_teacher, self.shared)])

    def check_earlier_run(self) -> None:
        """SystemExit when the seed's directory holds an earlier run and neither --resume nor --overwrite says
        what to do with it."""
        if self.seed_dir.exists() and not (self.args.resume or self.args.overwrite):
            raise SystemExit(f"{self.seed_dir} holds an earlier run of seed {self.args.seed}; pass --resume to "
                             "continue it, --overwrite to replace it, or choose another --out or --seed")  # fmt: skip

    def run(self) -> dict[str, Any]:
        if not self.shared_ready:  # else checked by the invocation that prepared `shared` for every seed
            self.check_shared()  # before anything is deleted
        self.check_earlier_run()
        if self.seed_dir.exists() and self.args.overwrite:
            shutil.rmtree(self.seed_dir)
        start = time.perf_counter()
        if not self.shared_ready:
            self.prepare_shared()
        t_seed = time.perf_counter()
        all_plans = plans(self.num_layers, self.num_kv, self.args.seed)
        plan_args = {k: v for k, v in all_plans.items() if k in self.args.plans}
        self._timed("stage 1 + head selection", [self.stage1_job()])
        self.stages["stage1"] = last_scalars(self.seed_dir / "stage1")
        for stage in (2, 3):
            self._timed(f"stage {stage}", self.stage_jobs(stage, plan_args), self.parallel)
            for name in plan_args:
                self.stages[f"{name} stage {stage}"] = last_scalars(self.seed_dir / name / f"stage{stage}")
        if self.teacher_done is not None:
            self.teacher_done.result()  # the evaluations take the screened tasks; the report, the teacher's row
        evals = [self.eval_job(n, self.seed_dir / n / "stage3" / "student", self.seed_dir) for n in plan_args]
        self._timed("evaluation", evals, self.parallel)
        self.timings["seed total"] = time.perf_counter() - t_seed
        self.timings["total"] = time.perf_counter() - start
        return self.report(list(plan_args))

    def report(self, names: list[str]) -> dict[str, Any]:
        from hydrahead_lit.eval.compare import compare
        from hydrahead_lit.experiments.environment import environment

        runs = [self.shared / "eval" / "teacher", *(self.seed_dir / "eval" / n for n in names)]
        paths = compare(runs, self.seed_dir / "report")
        selections = {}
        for f in sorted((self.seed_dir / "stage1").glob("selection_*.json")):
            sel = json.loads(f.read_text())
            selections[f.stem] = {"chosen": sel["chosen"], "method": sel["method"], "ratio": sel["ratio"],
                                  "heatmap": str(f.with_suffix(".png"))}  # fmt: skip
        summary = {
            "seed": self.args.seed,
            "teacher": str(self.teacher),
            "settings": self.settings(),
            "budgets": self.budgets(),
            "tasks": json.loads(self.tasks_record.read_text()) if self.tasks_record.is_file() else None,
            "selections": selections,
            "stages": self.stages,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "kept_from_earlier_run": self.kept,
            "environment": environment(),
            "args": {k: [str(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], Path)
                     else str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
        }  # fmt: skip
        (self.seed_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print("\n" + Path(paths["table"]).read_text())
        for name, sel in selections.items():
            print(f"{name}: FA (layer, group) {sel['chosen']}")
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items()))
        print(f"report: {paths['table']}; summary: {self.seed_dir / 'summary.json'}")
        return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hydrahead_lit.experiments.miniature", description=__doc__.split("\n")[0]
    )
    p.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS,
                   help="config set: stage1/2/3, eval and experiment.yaml (default configs/miniature)")  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="experiment directory (default runs/miniature)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="training seed of this invocation")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="several seeds one after another, then one report of them all in <out>/report")  # fmt: skip
    p.add_argument("--parallel-seeds", action="store_true",
                   help="with --seeds: run the seeds at the same time (after the shared corpus and teacher "
                        "evaluation); on one GPU the small jobs of several seeds share it")  # fmt: skip
    p.add_argument("--teacher", type=Path, default=None,
                   help="teacher: a model directory or a .gguf file (default: experiment.yaml's)")  # fmt: skip
    p.add_argument("--corpus", choices=("demo", "python"), default=None, help="corpus (default: experiment.yaml's)")
    p.add_argument("--data", nargs="+", default=None, help="training files instead of a corpus (prepare.py inputs)")
    p.add_argument("--val-data", nargs="+", default=None, help="held-out files, needed with --data")
    p.add_argument("--corpus-mb", type=float, default=None, help="size of the Python corpus in MiB")
    p.add_argument("--train-docs", type=int, default=None, help="procedural training documents (demo corpus)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="length of stages 1-2 (experiment.yaml's; auto: positions / top eval multiple)")  # fmt: skip
    p.add_argument("--stage3-multiple", type=int, default=None, help="stage-3 length in units of --seq-len")
    p.add_argument("--eval-multiples", type=int, nargs="+", default=None, help="eval lengths within the positions")
    p.add_argument("--long-eval-multiples", type=int, nargs="*", default=None, help="eval lengths past them")
    p.add_argument("--efficiency-multiples", type=int, nargs="+", default=None, help="cache/speed lengths")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same seed")
    again.add_argument("--resume", action="store_true",
                       help="continue an earlier run of the same seed: finished steps with unchanged configs are "
                            "kept, the others run (their leftovers move to <seed>/failed/)")  # fmt: skip
    p.add_argument("--plans", nargs="+", default=None, choices=PLAN_NAMES,
                   help="plans to compare (default: experiment.yaml's, else all)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time, with --parallel-seeds those of all seeds together (default: as many as "
                        "plans on GPU, 1 on CPU)")  # fmt: skip
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every run's max_steps (tests: small)")
    p.add_argument("--batch-size", type=int, default=None, help="override every run's batch size (tests: small)")
    p.add_argument("--num-workers", type=int, default=None, help="override data loader workers")
    p.add_argument("--prepare-workers", type=int, default=1, help="tokenizer processes preparing the corpus")
    p.add_argument("--eval-samples", type=int, default=None, help="samples per task x length (config: eval.yaml)")
    p.add_argument("--min-teacher-accuracy", type=float, default=None,
                   help="keep the tasks the teacher passes at the shortest length with at least this accuracy "
                        f"(experiment.yaml's; default {DEFAULT_MIN_TEACHER_ACCURACY})")  # fmt: skip
    p.add_argument("--probes", type=int, default=None, help="override every selection's num_probes (tests: small)")
    p.add_argument("--accelerator", default=None, help="trainer accelerator (configs: auto)")
    return p.parse_args(argv)


def _parallel_seeds(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Every seed of `args.seeds` at once, one thread each (their jobs are subprocesses). The shared corpus is
    made first, once, and the teacher is evaluated beside the seeds' training; every seed is checked for an
    earlier run before any starts. A seed that fails is raised after the others have finished (their runs are
    kept)."""
    runs = {seed: Miniature(argparse.Namespace(**{**vars(args), "seed": seed})) for seed in args.seeds}
    for m in runs.values():
        m.check_shared()
        m.check_earlier_run()
    runs[args.seeds[0]].prepare_shared()
    slots = threading.BoundedSemaphore(runs[args.seeds[0]].parallel)  # --jobs counts the jobs of all seeds
    for m in runs.values():
        m.shared_ready = True  # made once above, not verified again by every seed at the same time
        m.slots = slots
    with ThreadPoolExecutor(max_workers=len(runs) + 1) as pool:
        teacher = pool.submit(runs[args.seeds[0]].evaluate_teacher)
        for m in runs.values():
            m.teacher_done = teacher
        futures = {seed: pool.submit(m.run) for seed, m in runs.items()}
    failed = {seed: err for seed, f in futures.items() if (err := f.exception()) is not None}
    for seed, err in failed.items():  # every failing seed is named, not only the first
        print(f"[seed {seed}] failed: {type(err).__name__}: {err}", flush=True)
    if failed:
        raise RuntimeError(f"seed(s) {sorted(failed)} failed (see above); the runs of the others are kept")
    return {seed: f.result() for seed, f in futures.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.parallel_seeds and args.seeds is None:
        raise SystemExit("--parallel-seeds goes with --seeds (several seeds)")
    if args.seeds is None:
        return Miniature(args).run()
    from hydrahead_lit.eval.compare import compare

    if args.parallel_seeds:
        summaries = _parallel_seeds(args)
    else:
        summaries = {}
        for seed in args.seeds:
            summaries[seed] = Miniature(argparse.Namespace(**{**vars(args), "seed": seed})).run()
    out = args.out.resolve()
    runs = [out / "shared" / "eval" / "teacher", *(out / f"seed{s}" / "eval" for s in args.seeds)]
    paths = compare(runs, out / "report")
    print(f"\nall seeds {args.seeds}: {paths['table']}\n" + Path(paths["table"]).read_text())
    return {"seeds": summaries, "report": {k: str(v) for k, v in paths.items() if k != "plots"}}


if __name__ == "__main__":
    main()
