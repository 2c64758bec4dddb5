"""The demo driver: config rewriting, and the whole pipeline on a random tiny teacher with a tiny budget."""

from pathlib import Path

import pytest

from hydrahead_lit.demo import format_table, main, stage_config


def test_stage_config_moves_every_path_under_out(tmp_path) -> None:
    out, teacher, run = tmp_path / "out", tmp_path / "teacher", tmp_path / "out" / "x" / "stage2"
    cfg = stage_config("stage2", out, teacher, run, 0.5, plan={"method": "all_la"}, head_selection=None)
    model = cfg["model"]["init_args"]
    assert model["teacher"] == str(teacher) and model["init_from"] == str(out / "stage1" / "student")
    assert model["plan"] == {"method": "all_la"} and model["head_selection"] is None
    assert cfg["data"]["init_args"]["data_dirs"] == str(out / "data" / "train")
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == str(run.parent)
    export = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ExportStudent")]
    assert export[0]["init_args"]["dirpath"] == str(run / "student")
    assert cfg["trainer"]["max_steps"] == 200 and cfg["trainer"]["val_check_interval"] == 200


def test_format_table() -> None:
    row = {"passkey": 1.0, "niah_single": 0.5, "ppl": 3.14159, "fa_groups": "1/8", "kv_fraction": 0.125}
    table = format_table({"teacher": row})
    assert "| teacher | 1/8 | 1.00 | 0.50 | 3.14 |" in table


def test_demo_refuses_to_run_without_a_teacher(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no demo teacher"):
        main(["--out", str(tmp_path), "--teacher", str(tmp_path / "none"), "--train-docs", "50"])


def test_demo_end_to_end_on_a_random_teacher(tmp_path) -> None:
    """Every stage as a `python main.py fit` process of the job runner, selection, exports and evaluation."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hydrahead_lit.data.demo import demo_tokenizer

    teacher = tmp_path / "teacher"
    cfg = Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    Qwen3ForCausalLM(cfg).save_pretrained(teacher)
    demo_tokenizer().save_pretrained(teacher)
    out = tmp_path / "demo"
    args = ["--out", str(out), "--teacher", str(teacher), "--steps-scale", "0.02", "--eval-samples", "2",
            "--train-docs", "300", "--ppl-rows", "4"]  # fmt: skip
    result = main(args)
    assert set(result["models"]) == {"teacher", "hydrahead student", "all_la student"}
    assert result["models"]["all_la student"]["fa_groups"] == "0/8"
    assert result["models"]["hydrahead student"]["fa_groups"] == "1/8"
    assert Path(out / "summary.md").is_file() and (out / "stage1" / "head_selection.json").is_file()
    # Every stage ran as `python main.py fit --config <out>/configs/<run>.yaml` through the job runner.
    runs = ["stage1", "hydrahead_stage2", "hydrahead_stage3", "all_la_stage2", "all_la_stage3"]
    assert sorted(p.stem for p in (out / "configs").glob("*.yaml")) == sorted(runs)
    for run in runs:
        assert "`Trainer.fit` stopped: `max_steps=" in (out / "logs" / f"{run}.log").read_text(), run
    stages = list(result["stages"].values())
    assert [s["steps"] for s in stages] == [6.0, 8.0, 2.0, 8.0, 2.0]  # 0.02 x (300, 400, 40), at least 2
    assert all("val/ppl" in s and s["seconds"] > 0 for s in stages)
    with pytest.raises(SystemExit, match="--overwrite"):
        main(args)
