"""The miniature on other teachers: budgets that round, the SmolLM2 config set's jobs, the Python corpus."""

import json
import sys
from pathlib import Path

import pytest
import transformers
import yaml

from hydrahead_lit.cli import main as cli_main
from hydrahead_lit.experiments.corpus import VAL_EVERY, write_python_corpus
from hydrahead_lit.experiments.miniature import Miniature, budget, experiment_defaults, parse_args, plans
from hydrahead_lit.experiments.runner import ROOT, callbacks
from hydrahead_lit.modeling.plan import HeadPlan, fa_groups_for_ratio
from hydrahead_lit.selection.methods import select_plan

SMOLLM2 = ROOT / "configs" / "smollm2"


@pytest.mark.parametrize(
    ("total", "ratio", "groups"),
    [(8, 7, 1), (8, 3, 2), (90, 7, 11), (90, 3, 22), (9, 7, 1), (9, 3, 2), (4, 7, 1), (224, 7, 28)],
)
def test_budget_rounds_down_to_groups_the_selection_accepts(total: int, ratio: int, groups: int) -> None:
    n, exact = budget(total, ratio)
    assert n == groups and (exact >= ratio or n == 1)  # never more FA than the ratio allows, but at least one
    assert fa_groups_for_ratio(total, exact) == n
    if total % (ratio + 1) == 0:
        assert exact == ratio


def test_90_groups_at_7_to_1_keep_11() -> None:
    """SmolLM2-135M: 30 layers x 3 KV groups; every plan of the 7:1 budget gets 11 groups."""
    config = transformers.LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                      hidden_size=576, head_dim=64)  # fmt: skip
    exact7, exact3 = budget(90, 7)[1], budget(90, 3)[1]
    assert round(exact7, 4) == 7.1818 and round(exact3, 4) == 3.0909
    assert HeadPlan.random(config, exact7, seed=3).num_fa_groups == 11
    scores = {"retrieval": __import__("torch").rand(30, 3)}
    assert select_plan("retrieval", scores, 30, 3, 3, ratio=exact7).plan.num_fa_groups == 11
    assert select_plan("retrieval", scores, 30, 3, 3, ratio=exact3).plan.num_fa_groups == 22
    best = select_plan("layerwise", scores, 30, 3, 3, ratio=exact3).plan  # the best whole layers at 3:1
    assert best.num_fa_groups == 21 and len({g for g in best.fa_groups if g}) == 1
    assert plans(30, 3, 0)["layerwise_3to1"]["plan"]["fa_layers"] == [3, 7, 11, 15, 19, 23, 27]  # 21 groups


def smollm2_like(path: Path) -> Path:
    """A teacher directory with SmolLM2-135M's config (no weights: building job configs reads only config.json)."""
    path.mkdir(parents=True)
    transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                             tie_word_embeddings=True).save_pretrained(path)  # fmt: skip
    return path


def test_experiment_files_parse() -> None:
    for path in sorted((ROOT / "configs").rglob("experiment.yaml")):
        exp = experiment_defaults(path.parent)
        assert {"stage1.yaml", "stage2.yaml", "stage3.yaml", "eval.yaml"} <= {p.name for p in path.parent.iterdir()}
        assert exp["corpus"] in ("demo", "python"), path


def test_smollm2_jobs(tmp_path, capsys, monkeypatch) -> None:
    teacher = smollm2_like(tmp_path / "smol")
    m = Miniature(parse_args(["--configs", str(SMOLLM2), "--teacher", str(teacher), "--out", str(tmp_path / "out"),
                              "--seed", "2"]))  # fmt: skip
    assert m.n == 1024 and m.stage3_len == 16384 and m.corpus == "python"
    assert m.eval_lengths == [1024, 2048, 4096, 8192] and m.long_lengths == [16384, 32768]
    assert m.budgets()["7:1"]["fa_groups"] == 11 and m.budgets()["3:1"]["fa_groups"] == 22
    s1 = m.stage1_job().cfg
    ratios = {c["output"]: c["ratio"] for c in callbacks(s1, "HeadSelectionCallback")}
    assert ratios == {"selection_7to1.json": budget(90, 7)[1], "selection_3to1.json": budget(90, 3)[1],
                      "selection_best_layer.json": budget(90, 3)[1]}  # fmt: skip
    assert s1["data"]["init_args"]["tokenizer"] == str(teacher) and s1["data"]["init_args"]["seq_len"] == 1024
    s2 = m.stage_jobs(2, {"random_7to1": plans(30, 3, 2)["random_7to1"]})[0].cfg
    assert s2["model"]["init_args"]["plan"] == {"method": "random", "ratio": budget(90, 7)[1], "seed": 2}
    s3 = m.stage_jobs(3, {"all_la": {}})[0].cfg
    assert s3["data"]["init_args"]["seq_len"] == 16384 and s3["model"]["init_args"]["max_position_embeddings"] == 16384
    ev = m.eval_job("all_la", m.seed_dir / "all_la" / "stage3" / "student", m.seed_dir).cfg
    e = ev["model"]["init_args"]
    assert e["lengths"] == [1024, 2048, 4096, 8192, 16384, 32768] and e["max_length"] == 32768
    assert e["haystack"] == str(m.shared / "data" / "val") and e["efficiency_lengths"] == [8192, 32768]
    # A seed's budget of training tokens (three seeds in about 20 minutes of one H200, docs/smollm2.md).
    tokens = {n: c["trainer"]["max_steps"] * c["data"]["init_args"]["batch_size"] * c["data"]["init_args"]["seq_len"]
              for n, c in (("stage1", s1), ("stage2", s2), ("stage3", s3))}  # fmt: skip
    assert tokens == {"stage1": 150 * 8 * 1024, "stage2": 100 * 8 * 1024, "stage3": 15 * 16384}
    monkeypatch.setattr(sys, "argv", ["main.py"])
    for sub, cfg in (("fit", s1), ("fit", s2), ("fit", s3), ("test", ev)):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with pytest.raises(SystemExit) as exit_info:
            cli_main([sub, "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in cfg["model"]["init_args"].items():
            assert printed["model"]["init_args"][key] == value, key


def test_refusals(tmp_path) -> None:
    teacher = smollm2_like(tmp_path / "smol")
    args = ["--configs", str(SMOLLM2), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="names no teacher"):
        Miniature(parse_args(args))
    with pytest.raises(SystemExit, match="8 x --seq-len = 16384 .* max_position_embeddings \\(8192\\)"):
        Miniature(parse_args([*args, "--teacher", str(teacher), "--seq-len", "2048"])).check_shared()
    with pytest.raises(SystemExit, match="--data needs --val-data"):
        Miniature(parse_args([*args, "--teacher", str(teacher), "--data", str(tmp_path)])).check_shared()
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SystemExit, match="model_type 'gpt2'"):
        Miniature(parse_args([*args, "--teacher", str(bad)]))
    assert not (tmp_path / "out").exists()


def test_python_corpus_is_deterministic_and_holds_out_files(tmp_path) -> None:
    a = write_python_corpus(tmp_path / "a", 400_000, exclude=ROOT)
    b = write_python_corpus(tmp_path / "b", 400_000, exclude=ROOT)
    assert a == b and (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert a["train_files"] > 0 and a["val_files"] > 0
    assert 400_000 - 400_000 // VAL_EVERY <= a["train_bytes"] < 400_000 + (256 << 10)
    assert 400_000 // VAL_EVERY <= a["val_bytes"] < 400_000 // VAL_EVERY + (256 << 10)
    rows = [json.loads(line) for line in (tmp_path / "a" / "val.jsonl").read_text().splitlines()]
    assert all(r["text"].strip() and r["path"].endswith((".py", ".md", ".rst", ".txt")) for r in rows)
    assert not any(str(ROOT) in r for r in a["roots"] if not r.startswith(str(ROOT / ".venv")))
