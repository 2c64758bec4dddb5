"""Compare evaluated runs: one JSON, one Markdown table and one set of PNG plots.

    python -m hydrahead_lit.eval.compare runs/teacher runs/hydrahead runs/layerwise -o report/
    python -m hydrahead_lit.eval.compare runs/miniature/* -o docs/miniature/

Each argument is a ``results.json`` (written by ``python main.py test --config configs/eval/ruler.yaml``),
or a directory: every ``results.json`` below it, at any depth and in path order, is a run; folders
without one (data, checkpoints) are passed over, but an argument holding none at all is an error.
A file reached through two arguments counts once. A model's name is the ``name`` recorded in its
results (default: the folder holding the file).

Runs that share a name are repeats of one model, e.g. ``runs/miniature/seed0/eval/all_la`` and
``runs/miniature/seed1/eval/all_la``. They must agree on kind, FA KV share, tasks, lengths and the
evaluation's seed and sample count; every figure is then reported as mean ± sample sd (Markdown,
with a ``runs`` column) and as mean, sd, min and max (``comparison.json``'s ``aggregate``), the
plots draw the mean with a min-to-max band, and models are ordered by FA KV share, largest first.
Without repeats the output keeps the order of the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydrahead_lit.eval.report import RESULTS_NAME, load_run, write_report


def find_results(paths: list[str | Path]) -> list[Path]:
    """The results files named by ``paths``: files as given, directories searched recursively
    (sorted by path). Files reached twice count once. ValueError naming a path that yields none."""
    found: dict[Path, Path] = {}  # resolved -> as given, first seen
    for arg in paths:
        p = Path(arg)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob(RESULTS_NAME) if f.is_file())
        else:
            raise ValueError(f"{arg} does not exist; give a results.json or a directory holding one")
        if not files:
            raise ValueError(f"{arg} holds no {RESULTS_NAME} (searched recursively); evaluate the model first "
                             "(python main.py test --config configs/eval/ruler.yaml ...)")  # fmt: skip
        for f in files:
            found.setdefault(f.resolve(), f)
    return list(found.values())


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Load every run found under ``run_dirs`` (ValueError naming a bad one) and write the comparison
    into ``out_dir``; returns the written paths."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    files = find_results(run_dirs)
    return write_report([load_run(f) for f in files], out_dir, sources=[str(f) for f in files])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hydrahead_lit.eval.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="results.json files or directories searched for them")
    parser.add_argument("-o", "--output", required=True, help="directory for comparison.{json,md} and plots")
    args = parser.parse_args(argv)
    try:
        paths = compare(args.runs, args.output)
    except ValueError as e:
        parser.error(str(e))
    print(Path(paths["table"]).read_text())
    print(f"wrote {paths['json']}, {paths['table']} and {len(paths['plots'])} plots in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
