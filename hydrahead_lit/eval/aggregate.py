"""Repeated runs of one model (e.g. one per training seed) summarized as mean, spread and range.

Runs sharing a ``name`` are repeats. :func:`aggregate` groups them, checks that they evaluated the
same thing (:data:`MUST_AGREE`), and turns every figure of a ``results.json`` into a statistic
``{"mean", "sd", "min", "max", "n"}``: ``sd`` is the sample standard deviation (0 for one value),
``n`` how many repeats had the figure. Pure Python; runs are JSON-shaped (string length keys).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# (label, path into results.json): repeats of one model must agree on these to be averaged.
# The KV share is checked, not the head plan: a random-selection student may keep different
# groups per seed, but must keep as many.
MUST_AGREE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kind", ("kind",)),
    ("kv_cache_fraction", ("model", "kv_cache_fraction")),
    ("tasks", ("config", "tasks")),
    ("lengths", ("config", "lengths")),
    ("seed", ("config", "seed")),
    ("num_samples", ("config", "num_samples")),
)


def summarize(values: list[float]) -> dict[str, float] | None:
    """``{"mean", "sd", "min", "max", "n"}`` of ``values`` (sample sd, 0 for one value); None if empty."""
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": float(statistics.mean(values)), "sd": float(sd), "min": min(values), "max": max(values),
            "n": len(values)}  # fmt: skip


def _is_number(x: Any) -> bool:
    # bools are ints in Python but flags, not figures; NaN/inf would poison the mean
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _summarize_dicts(dicts: list[dict[str, Any] | None]) -> dict[str, dict[str, float]] | None:
    """Per numeric key, the statistic over the dicts that have it; None if no dict is present."""
    present = [d for d in dicts if d]
    if not present:
        return None
    keys = dict.fromkeys(k for d in present for k in d)  # first-seen order
    out = {k: summarize([d[k] for d in present if _is_number(d.get(k))]) for k in keys}
    return {k: s for k, s in out.items() if s is not None}


def _by_length(maps: list[dict[str, Any] | None]) -> list[str]:
    return sorted({n for m in maps if m for n in m}, key=int)


def _get(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        run = run.get(key) if isinstance(run, dict) else None
    return run


def check_repeats(name: str, runs: list[dict[str, Any]], sources: list[str | None]) -> None:
    """ValueError naming the model and the field when its repeats disagree on a :data:`MUST_AGREE` fact."""
    for label, path in MUST_AGREE:
        values = [_get(r, path) for r in runs]
        if any(v != values[0] for v in values[1:]):
            seen = ", ".join(f"{v!r} ({s or f'run {i}'})" for i, (v, s) in enumerate(zip(values, sources)))
            raise ValueError(f"runs named {name!r} disagree on {label}: {seen}; runs sharing a name are "
                             "averaged as repeats of one model, so give different models different names")  # fmt: skip


def run_average(run: dict[str, Any], lengths: list[str]) -> float | None:
    """A run's accuracy averaged over ``lengths`` (those it has); None if it has none."""
    average = run.get("average") or {}
    present = [average[n] for n in lengths if average.get(n) is not None]
    return sum(present) / len(present) if present else None


def summarize_model(name: str, runs: list[dict[str, Any]], sources: list[str | None],
                    lengths: list[str]) -> dict[str, Any]:  # fmt: skip
    """One model's statistics over its repeats (see :func:`aggregate` for the shape)."""
    check_repeats(name, runs, sources)
    tasks = dict.fromkeys(t for r in runs for t in r["ruler"])
    ruler = {}
    for t in tasks:
        cells = [r["ruler"].get(t, {}) for r in runs]
        ruler[t] = {n: _summarize_dicts([c.get(n) for c in cells]) for n in _by_length(cells)}
    averages = [r.get("average") or {} for r in runs]
    effs = [r.get("efficiency") for r in runs]
    efficiency = {n: _summarize_dicts([(e or {}).get(n) for e in effs]) for n in _by_length(effs)}
    return {
        "name": name,
        "kind": runs[0].get("kind", "?"),
        "n": len(runs),
        "sources": list(sources),
        "kv_cache_fraction": _get(runs[0], ("model", "kv_cache_fraction")),
        "devices": sorted({str(r.get("device", "?")) for r in runs}),
        "ruler": ruler,
        "average": {n: summarize([a[n] for a in averages if _is_number(a.get(n))]) for n in _by_length(averages)},
        "average_over_lengths": summarize([a for r in runs if (a := run_average(r, lengths)) is not None]),
        "perplexity": _summarize_dicts([r.get("perplexity") for r in runs]),
        "efficiency": efficiency if any(effs) else None,
    }


def lengths_of(runs: list[dict[str, Any]]) -> list[str]:
    """Every context length in any run's RULER cells, ascending, as JSON strings."""
    return sorted({n for r in runs for cells in r["ruler"].values() for n in cells}, key=int)


def aggregate(runs: list[dict[str, Any]], sources: list[str | None] | None = None) -> list[dict[str, Any]]:
    """Group ``runs`` (JSON-shaped results) by ``name`` and summarize each model.

    Returns one dict per model: ``name``, ``kind``, ``n`` (repeats), ``sources``, ``kv_cache_fraction``,
    ``devices``, ``ruler`` (``{task: {length: {figure: stat}}}``), ``average`` (``{length: stat}``),
    ``average_over_lengths`` (stat of each run's mean over the lengths), ``perplexity``
    (``{figure: stat}`` or None) and ``efficiency`` (``{length: {figure: stat}}`` or None), where a
    stat is :func:`summarize`'s dict. Order: that of ``runs`` when no name repeats; otherwise by FA
    KV share descending (teacher first, all-LA last), ties by first appearance.
    ValueError when repeats disagree on a :data:`MUST_AGREE` fact.
    """
    sources = [None] * len(runs) if sources is None else list(sources)
    if len(sources) != len(runs):
        raise ValueError(f"got {len(sources)} sources for {len(runs)} runs")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r["name"], []).append(i)
    lengths = lengths_of(runs)
    models = [summarize_model(name, [runs[i] for i in idx], [sources[i] for i in idx], lengths)
              for name, idx in groups.items()]  # fmt: skip
    if has_repeats(models):  # stable sort: equal shares keep first-appearance order; unknown shares last
        models.sort(key=lambda m: (m["kv_cache_fraction"] is None, -(m["kv_cache_fraction"] or 0.0)))
    return models


def has_repeats(models: list[dict[str, Any]]) -> bool:
    """Whether any model of :func:`aggregate`'s output was run more than once."""
    return any(m["n"] > 1 for m in models)
