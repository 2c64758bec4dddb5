"""Stage 1 with the default LA backend and with the PyTorch reference: same losses, same selection?

Runs one stage-1 config twice through the project's command line (``python main.py fit``), once with
``la: {backend: auto}`` (on a GPU: the Triton or fla kernels) and once with ``la: {backend: torch}``,
on the same data and seed, then compares the final alignment losses (train and validation) and every
head selection the config's callbacks wrote. Prints a Markdown table (and writes it with --markdown).

    PYTHONPATH=. python benchmarks/compare_stage1_backends.py --config configs/miniature/stage1.yaml \\
        --out runs/stage1_backends/demo --demo-docs 3000
    PYTHONPATH=. python benchmarks/compare_stage1_backends.py --config configs/smollm2/stage1.yaml \\
        --out runs/stage1_backends/smollm2 --teacher /models/smollm2 --corpus "src/**/*.md" --seq-len 2048
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOSS_TOL = 0.02  # the acceptance: final alignment losses within 2% of each other


def _prepare(out: Path, teacher: str, seq_len: int, corpus: list[str] | None, demo_docs: int) -> tuple[Path, Path]:
    """Train and validation corpora in LitData chunks, tokenized with the teacher's tokenizer."""
    dirs = []
    for split, seed in (("train", 1), ("val", 2)):
        target = out / "data" / split
        if (target / "index.json").is_file():
            dirs.append(target)
            continue
        if corpus:
            # Held-out rows: every 10th input file goes to validation (at least one).
            files = sorted({str(p) for pat in corpus for p in Path("/").glob(pat.lstrip("/"))})
            if not files:
                raise SystemExit(f"--corpus matched no files: {corpus}")
            val = files[::10]
            inputs = val if split == "val" else [f for f in files if f not in set(val)] or files
        else:
            from hydrahead_lit.data.demo import write_demo_corpus

            src = out / "data" / f"{split}.src"
            write_demo_corpus(src, demo_docs if split == "train" else max(demo_docs // 10, 200), seed=seed)
            inputs = [str(src)]
        list_file = out / "data" / f"{split}.inputs"
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("\n".join(inputs))
        cmd = [sys.executable, str(ROOT / "data" / "prepare.py"), "--tokenizer", teacher, "--seq-len", str(seq_len),
               "--output", str(target), "--num-workers", "4", "--input", *inputs]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT)
        dirs.append(target)
    return dirs[0], dirs[1]


def _config(base: dict, run: Path, backend: str, args: argparse.Namespace, train: Path, val: Path) -> dict:
    cfg = copy.deepcopy(base)
    t = cfg["trainer"]
    t["logger"]["init_args"].update(save_dir=str(run), name="stage1", version="")
    if args.steps:
        t["max_steps"] = args.steps
        t["val_check_interval"] = args.steps
    for cb in t.get("callbacks", []):
        a = cb.setdefault("init_args", {})
        if cb["class_path"].endswith("ExportStudent"):
            a["dirpath"] = str(run / "stage1" / "student")
        if cb["class_path"].endswith("HeadSelectionCallback"):
            if args.teacher:
                a["tokenizer"] = args.teacher
            if args.probe_length:
                a["probe_length"] = args.probe_length
    m = cfg["model"]["init_args"]
    if args.teacher:
        m["teacher"] = args.teacher
    m["la"] = {**(m.get("la") or {}), "backend": backend}
    d = cfg["data"]["init_args"]
    d.update(data_dirs=str(train), val_dir=str(val))
    if args.teacher:
        d["tokenizer"] = args.teacher
    if args.seq_len:
        d["seq_len"] = args.seq_len
    if args.batch_size:
        d["batch_size"] = args.batch_size
    return cfg


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for ev in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _summary(run: Path) -> dict:
    stage = run / "stage1"
    sc = _scalars(stage)
    train = [v for _, v in sc.get("train/align_loss", [])]
    val = [v for _, v in sc.get("val/align_loss", [])]
    selections = {p.name: json.loads(p.read_text()) for p in sorted(stage.glob("selection*.json"))}
    return {
        "train_align_loss": sum(train[-3:]) / max(len(train[-3:]), 1) if train else float("nan"),
        "val_align_loss": val[-1] if val else float("nan"),
        "selections": {n: s["chosen"] for n, s in selections.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--teacher", default=None, help="override the config's teacher (and its tokenizer)")
    p.add_argument("--corpus", nargs="*", default=None, help="globs of text files (else the demo corpus)")
    p.add_argument("--demo-docs", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--probe-length", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--backends", nargs="+", default=["auto", "torch"])
    p.add_argument("--timeout", type=int, default=900, help="seconds per stage-1 run")
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    teacher = args.teacher or base["model"]["init_args"]["teacher"]
    seq_len = args.seq_len or base["data"]["init_args"]["seq_len"]
    train, val = _prepare(args.out, teacher, seq_len, args.corpus, args.demo_docs)
    results = {}
    for backend in args.backends:
        run = args.out / backend
        if (run / "stage1").exists():
            raise SystemExit(f"{run / 'stage1'} exists: choose another --out (nothing is overwritten)")
        run.mkdir(parents=True)
        cfg_path = run / "stage1.yaml"
        cfg_path.write_text(yaml.safe_dump(_config(base, run, backend, args, train, val), sort_keys=False))
        cmd = [sys.executable, str(ROOT / "main.py"), "fit", "--config", str(cfg_path)]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.time()
        with open(run / "stage1.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
        secs = time.time() - t0
        if rc != 0:
            tail = (run / "stage1.log").read_text()[-3000:]
            raise SystemExit(f"stage 1 with backend {backend} failed (exit {rc}); log tail:\n{tail}")
        results[backend] = {**_summary(run), "seconds": secs}
        print(backend, json.dumps(results[backend]), flush=True)
        (run / "result.json").write_text(json.dumps(results[backend], indent=1) + "\n")
    if len(args.backends) < 2:  # one backend (runs in parallel, each with its own --out): its result alone
        print(f"one backend run; its result is in {args.out / args.backends[0] / 'result.json'}")
        return
    a, b = args.backends[:2]
    ra, rb = results[a], results[b]
    rel = {k: abs(ra[k] - rb[k]) / abs(rb[k]) for k in ("train_align_loss", "val_align_loss")}
    same = ra["selections"] == rb["selections"]
    lines = ["| backend | train align loss (last 3 logs) | val align loss | seconds |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['train_align_loss']:.5f} | {r['val_align_loss']:.5f} | {r['seconds']:.0f} |")
    lines.append("")
    lines.append(
        f"relative difference {a} vs {b}: train {rel['train_align_loss']:.2%}, val {rel['val_align_loss']:.2%} "
        f"(tolerance {LOSS_TOL:.0%}); same head selection: {'yes' if same else 'NO'}"
    )
    for name in ra["selections"]:
        lines.append(f"- `{name}`: {a} {ra['selections'][name]} / {b} {rb['selections'].get(name)}")
    lines.append("")
    lines.append(f"command: `python {shlex.join(sys.argv)}`")
    md = "\n".join(lines)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    ok = same and all(v <= LOSS_TOL for v in rel.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
