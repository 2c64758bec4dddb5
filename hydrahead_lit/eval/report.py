"""Results files of evaluation runs: ``results.json`` per run, then Markdown tables and PNG plots.

A run's ``results.json`` holds ``name``, ``kind``, ``model`` facts, the ``config`` used, ``ruler``
(``{task: {length: cell}}``, lengths as strings as JSON requires), ``average`` (``{length: score}``),
``perplexity`` and ``efficiency`` (``{length: figures}``, or null when not measured).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydrahead_lit.eval.aggregate import aggregate, has_repeats, lengths_of

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


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cell(stat: dict[str, float] | None, digits: int = 1, scale: float = 1.0) -> str:
    """``mean`` of a statistic, with ``± sd`` when it came from several runs."""
    if stat is None:
        return "–"
    text = f"{scale * stat['mean']:.{digits}f}"
    return f"{text} ± {scale * stat['sd']:.{digits}f}" if stat["n"] > 1 else text


def _bytes_cell(stat: dict[str, float] | None) -> str:
    """Cache sizes are fixed by the plan, so repeats usually agree: ``± sd`` only when they do not."""
    if stat is None:
        return "–"
    text = human_bytes(stat["mean"])
    return f"{text} ± {human_bytes(stat['sd'])}" if stat["n"] > 1 and stat["sd"] > 0 else text


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _tasks(models: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(t for m in models for t in m["ruler"]))


def markdown(runs: list[dict[str, Any]]) -> str:
    """Summary table (average accuracy by length, ppl, cache), per-task accuracy, efficiency figures.
    Runs sharing a name are repeats: their cells show ``mean ± sd`` (see :mod:`hydrahead_lit.eval.aggregate`)."""
    runs = [to_json(r) for r in runs]
    return _markdown(aggregate(runs), [int(n) for n in lengths_of(runs)])


def _markdown(models: list[dict[str, Any]], lengths: list[int]) -> str:
    repeats = has_repeats(models)
    top = str(lengths[-1])
    runs_col = ["runs"] if repeats else []
    out = ["## Accuracy (RULER string_match_all, %) averaged over tasks", ""]
    if repeats:
        out[0] += "; mean ± sample sd over runs sharing a name"
    out.append(_row(["model", "kind", "FA KV share", *runs_col, *map(str, lengths), "avg", "ppl", f"cache @ {top}"]))
    out.append(_row(["---"] * (6 + len(runs_col) + len(lengths))))
    for m in models:
        share = m["kv_cache_fraction"]
        share_txt = "–" if share is None else f"{100 * share:.1f}%"
        n_txt = [str(m["n"])] if repeats else []
        ppl = (m["perplexity"] or {}).get("ppl")
        cache = ((m["efficiency"] or {}).get(top) or {}).get("cache_bytes")
        out.append(_row([m["name"], m["kind"], share_txt, *n_txt, *[_cell(m["average"].get(str(n))) for n in lengths],
                         _cell(m["average_over_lengths"]), _cell(ppl, 3), _bytes_cell(cache)]))  # fmt: skip
    out += ["", "## Accuracy by task (%)", "", _row(["task", "model", *map(str, lengths)])]
    out.append(_row(["---"] * (2 + len(lengths))))
    for t in _tasks(models):
        for m in models:
            cells = m["ruler"].get(t, {})
            out.append(_row([t, m["name"], *[_cell((cells.get(str(n)) or {}).get("score")) for n in lengths]]))
    eff = [m for m in models if m["efficiency"]]
    if eff:
        out += ["", "## Efficiency (batch 1)", ""]
        out.append(_row(["model", "length", "cache", "teacher KV", "prefill (ms)", "decode (tok/s)"]))
        out.append(_row(["---"] * 6))
        for m in eff:
            for n, f in m["efficiency"].items():
                f = f or {}
                out.append(_row([m["name"], n, _bytes_cell(f.get("cache_bytes")),
                                 _bytes_cell(f.get("teacher_kv_bytes")), _cell(f.get("prefill_s"), 2, 1000),
                                 _cell(f.get("decode_tokens_per_s"))]))  # fmt: skip
        devices = sorted({d for m in eff for d in m["devices"]})
        out += ["", f"Measured on: {', '.join(devices)}."]
    return "\n".join(out) + "\n"


def plot(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """PNG plots, one line per model: accuracy vs length per task and averaged, and cache bytes.
    A model run several times is drawn as its mean with a band from min to max."""
    runs = [to_json(r) for r in runs]
    return _plot(aggregate(runs), [int(n) for n in lengths_of(runs)], out_dir)


def _plot(models: list[dict[str, Any]], lengths: list[int], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repeats = has_repeats(models)
    label = {m["name"]: f"{m['name']} (n={m['n']})" if repeats else m["name"] for m in models}
    note = "\nline: mean over runs, band: min to max" if repeats else ""
    panels: list[tuple[str, str, dict[str, dict[str, Any]]]] = [  # (file key, title, {label: {length: stat}})
        ("average", "average over tasks", {label[m["name"]]: m["average"] for m in models})
    ]
    for t in _tasks(models):
        series = {label[m["name"]]: {n: c["score"] for n, c in m["ruler"].get(t, {}).items() if c and "score" in c}
                  for m in models}  # fmt: skip
        panels.append((t, t, series))
    paths = []
    for key, title, series in panels:
        paths.append(_line_plot(plt, out / f"accuracy_{key}.png", series, lengths, f"Accuracy: {title}{note}",
                                "accuracy (%)", ylim=(-2, 102)))  # fmt: skip
    cache = {label[m["name"]]: {n: f["cache_bytes"] for n, f in m["efficiency"].items() if f and "cache_bytes" in f}
             for m in models if m["efficiency"]}  # fmt: skip
    if cache:
        paths.append(_line_plot(plt, out / "cache_bytes.png", cache, lengths, f"Generation cache after prefill{note}",
                                "cache (MiB, log scale)", ylim=None, log_y=True, scale=2**-20))  # fmt: skip
    return paths


def _line_plot(plt, path: Path, series: dict[str, dict[str, dict[str, float]]], lengths: list[int], title: str,
               ylabel: str, ylim: tuple[float, float] | None, log_y: bool = False,
               scale: float = 1.0) -> Path:  # fmt: skip
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=FIG_DPI)
    for name, points in series.items():
        xs = sorted(int(n) for n in points)
        stats = [points[str(n)] for n in xs]
        (line,) = ax.plot(xs, [scale * s["mean"] for s in stats], marker="o", label=name)
        if any(s["n"] > 1 for s in stats):
            ax.fill_between(xs, [scale * s["min"] for s in stats], [scale * s["max"] for s in stats],
                            color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
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
                 table_name: str = "comparison.md", sources: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the Markdown table, the plots and (unless ``json_name`` is None) the JSON for ``runs``
    into ``out_dir``; returns the paths. Runs sharing a ``name`` are repeats of one model, averaged
    (:func:`hydrahead_lit.eval.aggregate.aggregate`). The JSON is ``{"runs": [...]}``; with repeats
    each run also gets its ``source`` (from ``sources``, the results files) and an ``"aggregate"``
    list holds the per-model statistics."""
    if not runs:
        raise ValueError("no runs to report")
    runs = [to_json(r) for r in runs]
    models = aggregate(runs, sources)  # ValueError when repeats disagree
    lengths = [int(n) for n in lengths_of(runs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / table_name).write_text(_markdown(models, lengths))
    if json_name is not None:
        doc: dict[str, Any] = {"runs": runs}
        if has_repeats(models):
            srcs = sources or [None] * len(runs)
            doc = {"runs": [{**r, "source": s} for r, s in zip(runs, srcs)], "aggregate": models}
        (out / json_name).write_text(json.dumps(doc, indent=2) + "\n")
    return {"json": None if json_name is None else out / json_name, "table": out / table_name,
            "plots": _plot(models, lengths, out)}  # fmt: skip
