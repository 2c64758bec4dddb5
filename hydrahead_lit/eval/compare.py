"""Compare evaluated runs: one JSON, one Markdown table and one set of PNG plots.

    python -m hydrahead_lit.eval.compare runs/teacher runs/hydrahead runs/layerwise -o report/

Each run directory holds the ``results.json`` written by ``python main.py test --config
configs/eval/ruler.yaml``; a model's name is the ``name`` recorded there (default: its directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydrahead_lit.eval.report import load_run, write_report


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Load every run (ValueError naming a bad one) and write the comparison into ``out_dir``."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    return write_report([load_run(d) for d in run_dirs], out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hydrahead_lit.eval.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, each holding a results.json")
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
