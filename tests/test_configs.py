"""Every shipped YAML parses through the command line (`--print_config`) and round-trips."""

from pathlib import Path

import pytest
import yaml

from hydrahead_lit.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
# experiment.yaml files hold the defaults of an experiment command (hydrahead_lit.experiments.miniature), not a
# LightningCLI config; tests/experiments checks them.
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "experiment.yaml")


def _subcommand(path: Path) -> str:
    cfg = yaml.safe_load(path.read_text())
    return "test" if "EvalModule" in cfg.get("model", {}).get("class_path", "") else "fit"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_parses(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli([_subcommand(path), "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(path.read_text())
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    for key, value in source["model"].get("init_args", {}).items():
        assert printed["model"]["init_args"][key] == value, key


def test_qwen3_token_budget_is_15b() -> None:
    total = 0
    for stage in ("stage1", "stage2", "stage3"):
        cfg = yaml.safe_load((ROOT / "configs" / "qwen3-1.7b" / f"{stage}.yaml").read_text())
        t, d = cfg["trainer"], cfg["data"]["init_args"]
        total += t["max_steps"] * t["devices"] * t["num_nodes"] * d["batch_size"] * d["seq_len"]
    assert abs(total - 15e9) / 15e9 < 0.001, total


def test_every_stage_config_hands_off_by_init_from() -> None:
    for scale in ("demo", "qwen3-1.7b"):
        s2 = yaml.safe_load((ROOT / "configs" / scale / "stage2.yaml").read_text())["model"]["init_args"]
        s3 = yaml.safe_load((ROOT / "configs" / scale / "stage3.yaml").read_text())["model"]["init_args"]
        assert s2["init_from"].endswith("stage1/student") and s2["head_selection"].endswith("head_selection.json")
        assert s3["init_from"].endswith("stage2/student")
