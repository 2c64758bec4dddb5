"""The miniature on a teacher it has never seen: a tiny GGUF llama with its own byte-level BPE tokenizer, on
the Python corpus (sources and docs of the installed packages) with the retrieval mixture; CPU, tiny budget."""

import json

import pytest

pytest.importorskip("gguf")  # GGUF teachers need the gguf and accelerate packages
pytest.importorskip("accelerate")

from hydrahead_lit.data.lexicon import ADJECTIVES, NOUNS
from hydrahead_lit.data.manifest import tokenizer_fingerprint
from hydrahead_lit.data.prepare import verify_prepared
from hydrahead_lit.data.templates import template_texts
from hydrahead_lit.experiments.miniature import budget, main
from hydrahead_lit.teachers import load_teacher_tokenizer
from tests.teachers.tiny_gguf import TEXT, tiny_bpe, tiny_llama, write_gguf


def test_miniature_on_a_gguf_teacher_and_the_python_corpus(tmp_path) -> None:
    # Words of the task templates and of the needles become tokens, so that the tasks fit short lengths.
    tok = tiny_bpe(1024, [TEXT, *template_texts(), " ".join(ADJECTIVES), " ".join(NOUNS)] * 20)
    teacher = tiny_llama(tok.get_vocab_size(), layers=3, heads=6, kv_heads=3, positions=1024, hidden=96)  # 9 KV groups
    gguf = write_gguf(tmp_path / "tiny.gguf", teacher, tok)
    out = tmp_path / "out"
    summary = main(["--teacher", str(gguf), "--corpus", "python", "--corpus-mb", "2", "--out", str(out),
                    "--plans", "hydrahead_7to1", "--steps-scale", "0.005", "--batch-size", "2", "--num-workers", "0",
                    "--eval-samples", "2", "--probes", "4", "--eval-multiples", "1", "2", "--efficiency-multiples", "2",
                    "--stage3-multiple", "8", "--long-eval-multiples", "8",  # both past the teacher's 1,024 positions
                    "--accelerator", "cpu"])  # fmt: skip
    shared, seed_dir = out.resolve() / "shared", out.resolve() / "seed0"
    # The GGUF was imported once; every job reads the imported directory and its tokenizer.
    assert json.loads((shared / "teacher" / "gguf_source.json").read_text())["architecture"] == "llama"
    stage1 = (seed_dir / "configs" / "stage1.yaml").read_text()
    assert f"tokenizer: {shared / 'teacher'}" in stage1 and "tokenizer: demo" not in stage1
    sources = json.loads((shared / "data" / "python.src" / "sources.json").read_text())
    assert sources["train_files"] > 0 and sources["val_files"] > 0
    fingerprint = tokenizer_fingerprint(load_teacher_tokenizer(gguf))
    assert verify_prepared(shared / "data" / "train").tokenizer_fingerprint == fingerprint  # the teacher's own
    # 9 groups: 7:1 keeps one (LA:FA 8:1), 3:1 two (3.5:1).
    assert budget(9, 7) == (1, 8.0) and summary["budgets"]["7:1"] == {"fa_groups": 1, "ratio": 8.0, "total_groups": 9}
    result = json.loads((seed_dir / "eval" / "hydrahead_7to1" / "results.json").read_text())
    assert (result["model"]["fa_kv_groups"], result["model"]["total_kv_groups"]) == (1, 9)
    assert result["config"]["lengths"] == [256, 512, 2048] and result["perplexity"]["ppl"] > 1
    # Stage 3 trained on 2,048-token rows, past the teacher's positions: the student now declares them.
    stage3 = json.loads((seed_dir / "hydrahead_7to1" / "stage3" / "student" / "config.json").read_text())
    assert stage3["max_position_embeddings"] == 2048
    assert len(summary["selections"]["selection_7to1"]["chosen"]) == 1
    # The teacher was screened at the shortest length first (configs/miniature keeps every task: floor 0).
    assert summary["tasks"]["length"] == 256 and summary["tasks"]["dropped"] == []
    assert summary["tasks"]["kept"] == result["config"]["tasks"]
    assert len(summary["selections"]["selection_3to1"]["chosen"]) == 2  # floor(9 / 4)
    assert (seed_dir / "stage1" / "selection_7to1.png").is_file()
    table = (seed_dir / "report" / "comparison.md").read_text()
    assert all(f"| {n} |" in table for n in ("teacher", "hydrahead_7to1"))
