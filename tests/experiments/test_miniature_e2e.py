"""The miniature experiment end to end on the bundled demo teacher, with a tiny budget (60-70 s on 2 cores)."""

import json

from hydrahead_lit.experiments.miniature import DEFAULT_TEACHER, main

PHASES = ["data", "teacher evaluation", "stage 1 + head selection", "stage 2", "stage 3", "evaluation"]


def test_miniature_end_to_end(tmp_path) -> None:
    out = tmp_path / "out"
    summary = main(["--out", str(out), "--seed", "0", "--plans", "hydrahead_7to1", "all_la", "--steps-scale", "0.005",
                    "--batch-size", "2", "--num-workers", "0", "--eval-samples", "2", "--train-docs", "300",
                    "--accelerator", "cpu"])  # fmt: skip
    seed_dir = out.resolve() / "seed0"
    assert json.loads((out / "shared" / "settings.json").read_text())["teacher"] == str(DEFAULT_TEACHER)

    # Every student was evaluated at 1x, 2x and 4x the teacher's length, with the plan it was trained with.
    fa_groups = {}
    for name in ("hydrahead_7to1", "all_la"):
        result = json.loads((seed_dir / "eval" / name / "results.json").read_text())
        assert result["name"] == name and result["config"]["lengths"] == [256, 512, 1024]
        assert result["checkpoint"] == str(seed_dir / name / "stage3" / "student")
        fa_groups[name] = (result["model"]["fa_kv_groups"], result["model"]["total_kv_groups"])
    assert fa_groups == {"hydrahead_7to1": (1, 8), "all_la": (0, 8)}  # demo teacher: 4 layers x 2 KV groups
    assert (out / "shared" / "eval" / "teacher" / "results.json").is_file()

    table = (seed_dir / "report" / "comparison.md").read_text()
    for name in ("teacher", "hydrahead_7to1", "all_la"):
        assert f"| {name} |" in table, name

    on_disk = json.loads((seed_dir / "summary.json").read_text())
    assert on_disk["selections"] == summary["selections"]
    sel = on_disk["selections"]
    assert set(sel) == {"selection_7to1", "selection_3to1", "selection_best_layer"}
    assert len(sel["selection_7to1"]["chosen"]) == 1 and len(sel["selection_3to1"]["chosen"]) == 2  # of 8 groups
    best = sel["selection_best_layer"]["chosen"]
    assert len(best) == 2 and len({layer for layer, _ in best}) == 1  # one whole layer: both of its groups
    # The three selections rank the same scores: the 7:1 group is the best of the 3:1 budget's two.
    assert sel["selection_7to1"]["chosen"][0] in sel["selection_3to1"]["chosen"]

    stages = on_disk["stages"]
    assert set(stages) == {"stage1", "hydrahead_7to1 stage 2", "all_la stage 2", "hydrahead_7to1 stage 3",
                           "all_la stage 3"}  # fmt: skip
    assert "val/align_loss" in stages["stage1"]
    assert all("val/ppl" in stages[f"{n} stage {s}"] for n in ("hydrahead_7to1", "all_la") for s in (2, 3))
    assert set(PHASES) <= set(on_disk["timings_s"])
    print("phase timings (s):", on_disk["timings_s"])
