"""Repeated runs (seeds) in the comparison: discovery of results files, statistics, checks, table
order and plots. Synthetic results.json files with the schema EvalModule writes; no model needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hydrahead_lit.eval.aggregate import aggregate, summarize
from hydrahead_lit.eval.compare import compare, find_results
from hydrahead_lit.eval.compare import main as compare_main
from hydrahead_lit.eval.report import markdown, save_run, to_json, write_report

TASKS = ["passkey", "mqar"]
LENGTHS = [256, 512]


def result(name: str, score: float = 50.0, share: float = 0.125, kind: str = "student", ppl: float = 10.0,
           prefill_s: float = 0.01, **config) -> dict:  # fmt: skip
    """A results.json as ``EvalModule._build_results`` writes it; every cell scores ``score``,
    except mqar at 512 which scores 0 (so the per-length averages differ)."""
    cells = {t: {n: {"score": 0.0 if (t, n) == ("mqar", 512) else score, "string_match_part": score,
                     "exact_match": 0.0, "n": 10, "examples": []} for n in LENGTHS} for t in TASKS}  # fmt: skip
    cache = round(share * 4096) + 512
    return {
        "name": name,
        "kind": kind,
        "checkpoint": f"out/{name}",
        "model": {
            "class": "HydraHeadQwen3ForCausalLM",
            "parameters": 1000,
            "max_position_embeddings": 1024,
            "dtype": "float32",
            "kv_cache_fraction": share,
        },
        "config": {
            "tasks": TASKS,
            "lengths": LENGTHS,
            "efficiency_lengths": LENGTHS,
            "num_samples": 10,
            "seed": 0,
            "max_new_tokens": None,
            "batch_size": 8,
            "tokenizer": "demo",
            "held_out_dir": "val",
            "decode_tokens": 16,
            "repeats": 3,
            **config,
        },
        "ruler": cells,
        "average": {n: sum(cells[t][n]["score"] for t in TASKS) / len(TASKS) for n in LENGTHS},
        "perplexity": {"ppl": ppl, "nll": math.log(ppl), "tokens": 4096, "rows": 16, "seq_len": 256},
        "efficiency": {
            n: {
                "cache_bytes": cache * n,
                "teacher_kv_bytes": 4096 * n,
                "prefill_s": prefill_s,
                "prefill_tokens_per_s": n / prefill_s,
                "decode_tokens_per_s": 100.0,
                "cache_bytes_analytic": cache * n,
                "prompt_tokens": n,
            }
            for n in LENGTHS
        },
        "device": "cpu (x86_64)",
        "torch": "2.13.0+cpu",
        "seconds": 1.0,
    }


def as_json(run: dict) -> dict:
    """The run as compare reads it back from its results.json (string length keys)."""
    return json.loads(json.dumps(to_json(run)))


def miniature(root: Path, seeds: int = 2) -> Path:
    """The experiment's layout: a shared teacher, per-seed students, and folders without results."""
    save_run(result("teacher", 90.0, 1.0, kind="teacher"), root / "shared/eval/teacher")
    (root / "shared/data/val").mkdir(parents=True)
    (root / "shared/teacher").mkdir(parents=True)
    (root / "shared/teacher/config.json").write_text("{}")
    for s in range(seeds):
        (root / f"seed{s}/stage1/student").mkdir(parents=True)
        save_run(result("hydrahead_7to1", 40.0 + 10 * s), root / f"seed{s}/eval/hydrahead_7to1")
        save_run(result("all_la", 0.0, 0.0), root / f"seed{s}/eval/all_la")
    return root


def test_three_seeds_give_mean_sample_sd_min_max() -> None:
    seeds = [(10, 10, 0.01), (20, 11, 0.03), (30, 12, 0.02)]  # (score, ppl, prefill_s)
    runs = [as_json(result("hh", s, ppl=p, prefill_s=t)) for s, p, t in seeds]
    (m,) = aggregate(runs, ["a", "b", "c"])
    assert (m["name"], m["kind"], m["n"], m["sources"]) == ("hh", "student", 3, ["a", "b", "c"])
    assert m["kv_cache_fraction"] == 0.125
    # sample sd of 10, 20, 30 is 10 (population sd would be 8.16); one-ulp tolerance for float division
    assert m["ruler"]["passkey"]["256"]["score"] == pytest.approx({"mean": 20, "sd": 10, "min": 10, "max": 30, "n": 3})
    assert m["ruler"]["mqar"]["512"]["score"] == {"mean": 0.0, "sd": 0.0, "min": 0.0, "max": 0.0, "n": 3}
    assert m["average"]["512"] == pytest.approx({"mean": 10, "sd": 5, "min": 5, "max": 15, "n": 3})
    # each run's mean over lengths: (10 + 5) / 2, (20 + 10) / 2, (30 + 15) / 2
    assert m["average_over_lengths"] == pytest.approx({"mean": 15, "sd": 7.5, "min": 7.5, "max": 22.5, "n": 3})
    assert m["perplexity"]["ppl"] == pytest.approx({"mean": 11, "sd": 1, "min": 10, "max": 12, "n": 3})
    assert m["efficiency"]["256"]["prefill_s"] == pytest.approx({"mean": 0.02, "sd": 0.01, "min": 0.01, "max": 0.03,
                                                                 "n": 3})  # fmt: skip
    assert m["efficiency"]["512"]["cache_bytes"]["sd"] == 0.0
    table = markdown(runs)
    assert "| model | kind | FA KV share | runs | 256 | 512 | avg | ppl | cache @ 512 |" in table
    assert "| hh | student | 12.5% | 3 | 20.0 ± 10.0 | 10.0 ± 5.0 | 15.0 ± 7.5 | 11.000 ± 1.000 |" in table
    assert "| passkey | hh | 20.0 ± 10.0 | 20.0 ± 10.0 |" in table
    assert "| 20.00 ± 10.00 | 100.0 ± 0.0 |" in table  # prefill in ms, decode tok/s


def test_summarize_one_value_has_zero_sd() -> None:
    assert summarize([7]) == {"mean": 7.0, "sd": 0.0, "min": 7, "max": 7, "n": 1}
    assert summarize([]) is None


def test_single_runs_show_no_spread_and_keep_argument_order(tmp_path) -> None:
    runs = [as_json(result("b", 30.0, 0.0)), as_json(result("a", 60.0, 1.0, kind="teacher"))]
    table = markdown(runs)
    assert "±" not in table and "runs" not in table
    assert table.index("| b | student |") < table.index("| a | teacher |")  # no reordering without repeats
    paths = write_report(runs, tmp_path, sources=["x", "y"])
    assert json.loads(paths["json"].read_text()) == {"runs": runs}  # no sources, no aggregate: as before


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "teacher"}, "kind"),
        ({"share": 0.25}, "kv_cache_fraction"),
        ({"lengths": [256]}, "lengths"),
        ({"tasks": ["passkey"]}, "tasks"),
        ({"seed": 1}, "seed"),
        ({"num_samples": 20}, "num_samples"),
    ],
)
def test_repeats_that_disagree_are_an_error_naming_model_and_field(change, field) -> None:
    runs = [as_json(result("hh")), as_json(result("other")), as_json(result("hh", **change))]
    with pytest.raises(ValueError, match=rf"runs named 'hh' disagree on {field}: .*\(seed1\.json\)"):
        aggregate(runs, ["seed0.json", "o.json", "seed1.json"])


def test_miniature_layout_is_discovered_and_aggregated(tmp_path) -> None:
    root = miniature(tmp_path / "runs", seeds=3)
    args = [str(p) for p in sorted(root.iterdir())]  # what the shell makes of runs/miniature/*
    assert compare_main([*args, "-o", str(tmp_path / "report")]) == 0
    doc = json.loads((tmp_path / "report/comparison.json").read_text())
    sources = [r["source"] for r in doc["runs"]]
    assert sources == [str(root / p / "results.json") for p in ["seed0/eval/all_la", "seed0/eval/hydrahead_7to1",
        "seed1/eval/all_la", "seed1/eval/hydrahead_7to1", "seed2/eval/all_la", "seed2/eval/hydrahead_7to1",
        "shared/eval/teacher"]]  # fmt: skip
    agg = {m["name"]: m for m in doc["aggregate"]}
    assert [m["name"] for m in doc["aggregate"]] == ["teacher", "hydrahead_7to1", "all_la"]  # by FA KV share
    assert (agg["teacher"]["n"], agg["hydrahead_7to1"]["n"], agg["all_la"]["n"]) == (1, 3, 3)
    assert agg["hydrahead_7to1"]["sources"] == sources[1:6:2]
    assert agg["hydrahead_7to1"]["ruler"]["passkey"]["256"]["score"]["mean"] == pytest.approx(50.0)
    table = (tmp_path / "report/comparison.md").read_text()
    assert "| teacher | teacher | 100.0% | 1 | 90.0 | 45.0 |" in table  # one run: plain number
    assert "| hydrahead_7to1 | student | 12.5% | 3 | 50.0 ± 10.0 |" in table


def test_overlapping_arguments_count_once(tmp_path) -> None:
    root = miniature(tmp_path / "runs")
    one = root / "seed0/eval/all_la/results.json"
    files = find_results([root, root / "seed0", one, root / "seed0/eval/all_la"])
    assert len(files) == 5 and len({f.resolve() for f in files}) == 5
    assert files == find_results([root])  # first-seen path order
    compare([root / "seed0", root], tmp_path / "out")
    doc = json.loads((tmp_path / "out/comparison.json").read_text())
    assert len(doc["runs"]) == 5
    assert {m["name"]: m["n"] for m in doc["aggregate"]} == {"teacher": 1, "hydrahead_7to1": 2, "all_la": 2}


def test_arguments_without_results_are_errors_naming_them(tmp_path, capsys) -> None:
    root = miniature(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"shared/data holds no results.json"):
        find_results([root, root / "shared/data"])
    with pytest.raises(ValueError, match="nowhere does not exist"):
        find_results([tmp_path / "nowhere"])
    with pytest.raises(SystemExit):
        compare_main([str(root / "seed0/stage1"), "-o", str(tmp_path / "out")])
    assert "stage1 holds no results.json" in capsys.readouterr().err


def test_table_orders_models_by_kv_share_with_ties_by_appearance(tmp_path) -> None:
    shares = {"all_la": 0.0, "random": 0.125, "teacher": 1.0, "hydrahead": 0.125, "layerwise": 0.25}
    runs = [as_json(result(name, share=s, kind="teacher" if name == "teacher" else "student"))
            for _ in range(2) for name, s in shares.items()]  # fmt: skip
    table = markdown(runs)
    rows = [line.split(" | ")[0][2:] for line in table.splitlines()[4:9]]
    assert rows == ["teacher", "layerwise", "random", "hydrahead", "all_la"]


def test_plots_with_repeats_are_640x400_and_deterministic(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    runs = [as_json(result("hh", s)) for s in (10, 20, 30)] + [as_json(result("teacher", 90, 1.0, kind="teacher"))]
    bands = []
    fill_between = Axes.fill_between
    monkeypatch.setattr(Axes, "fill_between", lambda ax, x, y1, y2, **kw: bands.append((x, y1, y2)) or
                        fill_between(ax, x, y1, y2, **kw))  # fmt: skip
    first = write_report(runs, tmp_path / "a")["plots"]
    second = write_report(runs, tmp_path / "b")["plots"]
    names = [p.name for p in first]
    assert names == ["accuracy_average.png", "accuracy_passkey.png", "accuracy_mqar.png", "cache_bytes.png"]
    for p, q in zip(first, second):
        assert plt.imread(p).shape[:2] == (400, 640)
        assert p.read_bytes() == q.read_bytes(), f"{p.name} differs between two identical reports"
    # one min-to-max band per plot and report, for the repeated model only (the teacher ran once)
    assert len(bands) == 2 * len(first)
    assert bands[1] == ([256, 512], [10.0, 10.0], [30.0, 30.0])  # passkey: scores 10, 20, 30 at both lengths
