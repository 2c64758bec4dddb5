"""The generation benchmark at a tiny size on the CPU: every (model, path, cell) runs and the table is written."""

import json

import pytest
import torch

from hydrahead_lit.eval import bench
from hydrahead_lit.eval.efficiency import copy_bandwidth, decode_read_bytes, measure_length, weight_bytes


def test_tiny_bench_runs_every_path_and_writes_the_table(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert bench.main(["--tiny", "-o", str(out), "--markdown", str(md)]) == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert len(rows) == 2 * 2 * len(bench.TINY_CELLS)  # teacher, hydrahead x eager, fast x cells
    assert all("error" not in r for r in rows)
    for r in rows:
        assert r["prefill_s"] > 0 and r["decode_s_per_step"] > 0 and 0 < r["bandwidth_limit_fraction"]
        assert r["decode_tokens_per_s"] == pytest.approx(r["batch"] / r["decode_s_per_step"])
        assert r["cache_bytes"] == r["cache_bytes_analytic"]
        if r["path"] == "fast":  # fp32: the fast paths decode the eager paths' greedy tokens
            assert r["tokens_equal_eager"] == len(r["tokens"][0])
            assert not r["graph"] and not r["compiled"]  # CPU
    text = md.read_text()
    assert "| teacher | fast (static) | 48 | 1 |" in text and "| hydrahead | fast (static) | 40 | 2 |" in text
    assert "fast / teacher fast" in text
    with pytest.raises(SystemExit):  # nothing written is overwritten
        bench.main(["--tiny", "--markdown", str(md)])


def test_cells_parse_and_bad_cells_are_refused():
    assert bench.parse_cell("32768x16") == (32768, 16)
    for bad in ("32768", "0x1", "ax2"):
        with pytest.raises(Exception, match="CONTEXTxBATCH|>= 1"):
            bench.parse_cell(bad)


def test_read_bytes_count_weights_once_and_the_context():
    teacher = bench.build_teacher("tiny", 128, torch.float32, "cpu")
    embed = teacher.get_input_embeddings().weight
    assert weight_bytes(teacher) == sum(p.numel() * 4 for p in teacher.parameters()) - embed.numel() * 4
    per_row = decode_read_bytes(teacher, 2, 100, torch.float32) - decode_read_bytes(teacher, 1, 100, torch.float32)
    assert per_row == 2 * 2 * 2 * 16 * 100 * 4  # layers x (k, v) x KV heads x head_dim x tokens x fp32
    assert copy_bandwidth("cpu", nbytes=2**20, repeats=2) > 0
    with pytest.raises(ValueError, match="unknown decode path"):
        measure_length(teacher, 8, path="graph")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_bench_on_cuda_captures_both_fast_paths(tmp_path):
    """fp32 on the GPU: the captured (and compiled) teacher and student steps decode the eager greedy tokens."""
    out = tmp_path / "bench.json"
    argv = ["--shape", "tiny", "--device", "cuda", "--dtype", "float32", "--cells", "300x1", "200x4",
            "--decode-tokens", "8", "--repeats", "1", "-o", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert all("error" not in r for r in rows)
    for r in (r for r in rows if r["path"] == "fast"):
        assert r["graph"], r["model"]
        assert r["tokens_equal_eager"] == 8, (r["model"], r["context"], r["batch"])
        assert 0 < r["bandwidth_limit_fraction"] < 1.5 and r["peak_memory_bytes"] > 0
