"""The bundled CPU demo, one command: `python main.py demo`.

1. writes and prepares the procedural demo corpus (train and held-out) with the demo tokenizer;
2. stage 1 on the committed tiny teacher (`data/demo/teacher`), then head selection at 7:1;
3. stages 2 and 3 twice on the same budget: the HydraHead plan from the selection, and all-LA;
4. evaluates teacher and both students (retrieval accuracy by greedy decoding of synthetic samples at
   the teacher's training length, held-out perplexity) and prints a table (also in `<out>/summary.md`).

Each stage is a `python main.py fit --config <out>/configs/<run>.yaml` command, run by the experiments' job
runner (`hydrahead_lit.experiments.runner`) as every experiment runs its stages: the configs are
`configs/demo/*.yaml` with their paths moved under `--out`, each run's output is in `<out>/logs/<run>.log`, and
its metrics are read back from its TensorBoard files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from hydrahead_lit.experiments.runner import (
    ROOT,
    Job,
    last_scalars,
    load_config,
    logged_steps,
    run_jobs,
    scale_steps,
    set_run_dir,
)

CONFIG_DIR = ROOT / "configs" / "demo"
DEFAULT_TEACHER = ROOT / "data" / "demo" / "teacher"
DEFAULT_OUT = Path("runs/demo")
EVAL_TASKS = ("passkey", "niah_single")
PLANS = {"hydrahead": None, "all_la": {"method": "all_la"}}  # None: the stage-1 head selection


def prepare_data(out: Path, train_docs: int, val_docs: int, seq_len: int) -> tuple[Path, Path]:
    """Procedural demo documents (train: seed 1, held-out: seed 2) tokenized into LitData chunks."""
    from hydrahead_lit.data.demo import write_demo_corpus
    from hydrahead_lit.data.prepare import prepare_corpus, verify_prepared

    dirs = []
    for split, n_docs, seed in (("train", train_docs, 1), ("val", val_docs, 2)):
        target = out / "data" / split
        try:
            verify_prepared(target)
        except ValueError:
            src = out / "data" / f"{split}.src"
            write_demo_corpus(src, n_docs, seed=seed)
            prepare_corpus([str(src)], target, "demo", seq_len, chunk_blocks=64, overwrite=True)
        dirs.append(target)
    return dirs[0], dirs[1]


def _rewrite(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, list):
        return [_rewrite(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, old, new) for k, v in value.items()}
    return value


def stage_config(stage: str, out: Path, teacher: Path, run_dir: Path, steps_scale: float, **model: Any) -> dict:
    """configs/demo/<stage>.yaml with its paths moved under `out` and its run under `run_dir`."""
    cfg = _rewrite(load_config(CONFIG_DIR / f"{stage}.yaml"), "runs/demo", str(out))
    cfg = _rewrite(cfg, "data/demo/teacher", str(teacher))
    set_run_dir(cfg, run_dir)
    scale_steps(cfg, steps_scale)
    cfg["model"]["init_args"].update(model)
    return cfg


def stage_job(name: str, cfg: dict, out: Path) -> Job:
    """`python main.py fit --config <out>/configs/<name>.yaml`, its output in `<out>/logs/<name>.log`."""
    return Job(name, "fit", cfg, out / "configs" / f"{name}.yaml", out / "logs" / f"{name}.log")


def run_stage(job: Job, run_dir: Path) -> dict[str, float]:
    """Run `job` with the job runner; the last logged value of every metric of its run, its steps and seconds."""
    seconds = run_jobs([job])[job.name]
    metrics = last_scalars(run_dir)
    metrics["steps"] = float(logged_steps(run_dir))
    metrics["seconds"] = seconds
    return metrics


def evaluate(path: Path, val_dir: Path, length: int, samples: int, ppl_rows: int) -> dict[str, Any]:
    """Retrieval accuracy per task (exact answer, greedy) and held-out perplexity of a saved model."""
    import torch

    from hydrahead_lit.eval.load import load_model
    from hydrahead_lit.eval.perplexity import perplexity
    from hydrahead_lit.eval.ruler import run_cell

    model, tok, _ = load_model(path)
    result: dict[str, Any] = {}
    with torch.inference_mode():
        for task in EVAL_TASKS:
            cell = run_cell(model, tok, task, length, samples, seed=12345, batch_size=8)
            result[task] = cell["score"] / 100.0
        result["ppl"] = perplexity(model, val_dir, tok, seq_len=length, max_rows=ppl_rows)["ppl"]
    plan = getattr(model, "head_plan", None)
    result["kv_fraction"] = 1.0 if plan is None else plan.kv_cache_fraction
    result["fa_groups"] = "all" if plan is None else f"{plan.num_fa_groups}/{plan.total_groups}"
    return result


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    head = "| model | FA KV groups | " + " | ".join(f"{t} acc" for t in EVAL_TASKS) + " | held-out ppl |"
    lines = [head, "|" + " --- |" * (len(EVAL_TASKS) + 3)]
    for name, r in rows.items():
        accs = " | ".join(f"{r[t]:.2f}" for t in EVAL_TASKS)
        lines.append(f"| {name} | {r['fa_groups']} | {accs} | {r['ppl']:.2f} |")
    return "\n".join(lines)


def format_stages(stages: dict[str, dict[str, float]]) -> str:
    keys = ("steps", "seconds", "train/align_loss", "train/loss", "val/ppl", "val/kl")
    lines = ["| run | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, m in stages.items():
        cells = " | ".join(f"{m[k]:.4g}" if k in m and math.isfinite(m[k]) else "-" for k in keys)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="main.py demo", description="The bundled CPU demo of the HydraHead pipeline.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default runs/demo)")
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="teacher directory (the committed one)")
    p.add_argument("--overwrite", action="store_true", help="delete the runs of an earlier demo in --out first")
    p.add_argument("--prepare-only", action="store_true", help="only write the corpus (for pretrain_teacher.yaml)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's max_steps (tests: small)")
    p.add_argument("--eval-samples", type=int, default=40, help="synthetic samples per retrieval task")
    p.add_argument("--eval-length", type=int, default=256, help="retrieval sample length (the teacher's)")
    p.add_argument("--ppl-rows", type=int, default=32, help="held-out rows for perplexity")
    p.add_argument("--train-docs", type=int, default=20000, help="procedural training documents")
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    runs = [out / "stage1", *(out / name for name in PLANS), out / "logs"]
    if any(r.exists() for r in runs):
        if not args.overwrite:
            raise SystemExit(f"{out} holds an earlier demo run; pass --overwrite to replace it, or choose --out")
        for r in runs:
            shutil.rmtree(r, ignore_errors=True)
    teacher = args.teacher.resolve()
    if not args.prepare_only and not (teacher / "config.json").is_file():
        raise SystemExit(
            f"no demo teacher at {teacher}: make it with `python main.py demo --prepare-only` and "
            "`python main.py fit --config configs/demo/pretrain_teacher.yaml` (or pass --teacher)"
        )
    start = time.perf_counter()
    train_dir, val_dir = prepare_data(out, args.train_docs, 500, seq_len=256)
    print(f"demo corpus ready in {time.perf_counter() - start:.0f} s: {train_dir} and {val_dir}")
    if args.prepare_only:
        return {}
    scale = args.steps_scale
    stages: dict[str, dict[str, float]] = {}
    stage1 = out / "stage1"
    stages["stage 1 (twins; val ppl = all heads swapped to LA)"] = run_stage(
        stage_job("stage1", stage_config("stage1", out, teacher, stage1, scale), out), stage1
    )
    selection = stage1 / "head_selection.json"
    for name, plan in PLANS.items():
        s2, s3 = out / name / "stage2", out / name / "stage3"
        model = {"init_from": str(stage1 / "student")}
        model.update({"head_selection": str(selection)} if plan is None else {"head_selection": None, "plan": plan})
        cfg2 = stage_config("stage2", out, teacher, s2, scale, **model)
        stages[f"{name} stage 2"] = run_stage(stage_job(f"{name}_stage2", cfg2, out), s2)
        cfg3 = stage_config("stage3", out, teacher, s3, scale, init_from=str(s2 / "student"))
        stages[f"{name} stage 3"] = run_stage(stage_job(f"{name}_stage3", cfg3, out), s3)
    train_s = time.perf_counter() - start
    rows = {"teacher": evaluate(teacher, val_dir, args.eval_length, args.eval_samples, args.ppl_rows)}
    for name in PLANS:
        rows[f"{name} student"] = evaluate(
            out / name / "stage3" / "student", val_dir, args.eval_length, args.eval_samples, args.ppl_rows
        )
    total_s = time.perf_counter() - start
    table, stage_table = format_table(rows), format_stages(stages)
    summary = (
        f"HydraHead demo: retrieval at {args.eval_length} tokens ({args.eval_samples} samples a task), "
        f"held-out perplexity on {args.ppl_rows} rows; same budget for both students.\n\n{table}\n\n"
        f"Per-stage metrics (last logged values):\n\n{stage_table}\n\n"
        f"Data and training {train_s / 60:.1f} min, evaluation {(total_s - train_s) / 60:.1f} min, "
        f"total {total_s / 60:.1f} min."
    )
    print("\n" + summary)
    (out / "summary.md").write_text(summary + "\n")
    result = {"models": rows, "stages": stages, "train_seconds": train_s, "total_seconds": total_s}
    (out / "summary.json").write_text(json.dumps(copy.deepcopy(result), indent=2) + "\n")
    print(
        f"\nwritten: {out / 'summary.md'} (this table), {out / 'summary.json'}; students under "
        f"{out}/<plan>/stage3/student; logs under {out / 'logs'}; TensorBoard: tensorboard --logdir {out}"
    )
    return result


if __name__ == "__main__":
    main()
