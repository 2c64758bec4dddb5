"""Results files of evaluation runs: ``results.json`` per run, then Markdown tables and PNG plots.

A run's ``results.json`` holds ``name``, ``kind``, ``model`` facts, the ``config`` used, ``ruler``
(``{task: {length: cell}}``, lengths as strings as JSON requires), ``average`` (``{length: score}``),
``perplexity`` and ``efficiency`` (``{length: figures}``, or null when not measured).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.json"
TABLE_NAME = "results.md"
FIG_SIZE = (6.4, 4.0)  # inches; at FIG_DPI gives 640 x 400 pixel plots
FIG_DPI = 100


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``results`` with integer length keys turned into strings (JSON object keys)."""

    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv(results)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's results; ``name`` defaults to the directory name. ValueError if there is no results.json."""
    d = Path(run_dir)
    path = d / RESULTS_NAME if d.is_dir() else d
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no {RESULTS_NAME}; evaluate the model first "
                         "(python main.py test --config configs/eval/ruler.yaml ...)")  # fmt: skip
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(run, dict) or "ruler" not in run:
        raise ValueError(f"{path} is not an evaluation result (no 'ruler' entry)")
    run.setdefault("name", path.parent.name)
    return run


def _lengths(runs: list[dict[str, Any]]) -> list[int]:
    return sorted({int(n) for r in runs for cells in r["ruler"].values() for n in cells})


def _tasks(runs: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        seen.update(dict.fromkeys(r["ruler"]))
    return list(seen)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(runs: list[dict[str, Any]]) -> str:
    """Summary table (average accuracy by length, ppl, cache), per-task accuracy, efficiency figures."""
    runs = [to_json(r) for r in runs]
    lengths, tasks = _lengths(runs), _tasks(runs)
    top = str(lengths[-1])
    out = ["## Accuracy (RULER string_match_all, %) averaged over tasks", ""]
    out.append(_row(["model", "kind", "FA KV share", *map(str, lengths), "avg", "ppl", f"cache @ {top}"]))
    out.append(_row(["---"] * (6 + len(lengths))))
    for r in runs:
        avg = [r["average"].get(str(n)) for n in lengths]
        present = [a for a in avg if a is not None]
        share = r.get("model", {}).get("kv_cache_fraction")
        cache = (r.get("efficiency") or {}).get(top, {}).get("cache_bytes")
        ppl = (r.get("perplexity") or {}).get("ppl")
        share_txt = "–" if share is None else f"{100 * share:.1f}%"
        mean = sum(present) / len(present) if present else None
        out.append(_row([r["name"], r.get("kind", "?"), share_txt, *[_fmt(a) for a in avg], _fmt(mean),
                         _fmt(ppl, 3), human_bytes(cache)]))  # fmt: skip
    out += ["", "## Accuracy by task (%)", "", _row(["task", "model", *map(str, lengths)])]
    out.append(_row(["---"] * (2 + len(lengths))))
    for t in tasks:
        for r in runs:
            cells = r["ruler"].get(t, {})
            out.append(_row([t, r["name"], *[_fmt(cells.get(str(n), {}).get("score")) for n in lengths]]))
    eff = [r for r in runs if r.get("efficiency")]
    if eff:
        out += ["", "## Efficiency (batch 1)", ""]
        out.append(_row(["model", "length", "cache", "teacher KV", "prefill (ms)", "decode (tok/s)"]))
        out.append(_row(["---"] * 6))
        for r in eff:
            for n, f in sorted(r["efficiency"].items(), key=lambda kv: int(kv[0])):
                out.append(_row([r["name"], n, human_bytes(f["cache_bytes"]), human_bytes(f["teacher_kv_bytes"]),
                                 _fmt(1000 * f["prefill_s"], 2), _fmt(f["decode_tokens_per_s"], 1)]))  # fmt: skip
        devices = sorted({str(r.get("device", "?")) for r in eff})
        out += ["", f"Measured on: {', '.join(devices)}."]
    return "\n".join(out) + "\n"


def plot(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """PNG plots, one line per model: accuracy vs length per task and averaged, and cache bytes."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = [to_json(r) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths = _lengths(runs)
    panels: list[tuple[str, str, dict[str, dict[str, float]]]] = [
        ("average", "average over tasks", {r["name"]: r["average"] for r in runs})
    ]
    for t in _tasks(runs):
        panels.append((t, t, {r["name"]: {n: c["score"] for n, c in r["ruler"].get(t, {}).items()} for r in runs}))
    paths = []
    for key, title, series in panels:
        paths.append(_line_plot(plt, out / f"accuracy_{key}.png", series, lengths, f"Accuracy: {title}",
                                "accuracy (%)", ylim=(-2, 102)))  # fmt: skip
    eff = {r["name"]: {n: f["cache_bytes"] / 2**20 for n, f in r["efficiency"].items()} for r in runs
           if r.get("efficiency")}  # fmt: skip
    if eff:
        paths.append(_line_plot(plt, out / "cache_bytes.png", eff, lengths, "Generation cache after prefill",
                                "cache (MiB, log scale)", ylim=None, log_y=True))  # fmt: skip
    return paths


def _line_plot(plt, path: Path, series: dict[str, dict[str, float]], lengths: list[int], title: str,
               ylabel: str, ylim: tuple[float, float] | None, log_y: bool = False) -> Path:  # fmt: skip
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=FIG_DPI)
    for name, points in series.items():
        xs = sorted(int(n) for n in points)
        ax.plot(xs, [points[str(n)] for n in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [_short(n) for n in lengths])
    ax.minorticks_off()
    if ylim is not None:
        ax.set_ylim(*ylim)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=FIG_DPI, metadata={"Software": None})  # no version string: same bytes every run
    plt.close(fig)
    return path


def _short(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def save_run(run: dict[str, Any], out_dir: str | Path) -> Path:
    """Write one run's ``results.json`` (what :func:`load_run` reads)."""
    path = Path(out_dir) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(run), indent=2) + "\n")
    return path


def write_report(runs: list[dict[str, Any]], out_dir: str | Path, json_name: str | None = "comparison.json",
                 table_name: str = "comparison.md") -> dict[str, Any]:  # fmt: skip
    """Write the Markdown table, the plots and (unless ``json_name`` is None) ``{"runs": [...]}`` as
    JSON for ``runs`` into ``out_dir``; returns the paths."""
    if not runs:
        raise ValueError("no runs to report")
    names = [r["name"] for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"run names must be unique, got {dup} more than once; give runs distinct 'name's")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(runs)
    (out / table_name).write_text(table)
    if json_name is not None:
        (out / json_name).write_text(json.dumps(to_json({"runs": runs}), indent=2) + "\n")
    return {"json": None if json_name is None else out / json_name, "table": out / table_name,
            "plots": plot(runs, out)}  # fmt: skip
