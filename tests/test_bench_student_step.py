"""The training-throughput benchmark on the CPU at a tiny shape: every column is produced, the markdown is
appended, the distillation step's split adds up, the batch search halves on out-of-memory errors, bad input
fails before any model is built. Not a measurement."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # the scripts import their sibling as a top-level module
    sys.path.insert(0, str(BENCHMARKS))
bench = importlib.import_module("bench_student_step")
distill = importlib.import_module("bench_distill_step")

TINY = ["--device", "cpu", "--shape", "tiny", "--dtype", "fp32", "--warmup", "0", "--iters", "1"]


def tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables of `text` keyed by their header line, each a list of rows of cells."""
    found: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            found[line] = rows
    return found


def header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |"


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_tiny_cpu_run_fills_every_column_and_appends(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    earlier = "# Benchmarks\n\n## An earlier section\n\nits numbers\n"
    md.write_text(earlier)
    argv = [*TINY, "--lengths", "16", "32", "--batch", "auto", "--max-batch", "2", "--profile-step", "16"]
    argv += ["--reference-loss", "--markdown", str(md)]
    printed = bench.main(argv)
    text = md.read_text()
    assert text.startswith(earlier + "\n## Training throughput, tiny (")  # appended, nothing overwritten
    assert text.endswith(printed)
    assert "torch " in text and "triton " in text and "transformers " in text
    assert "benchmarks/bench_student_step.py --device cpu --shape tiny --dtype fp32" in text  # the command
    assert text.count("| student 7:1, reference loss |") == 2  # the reference loss's row at each length

    found = tables(text)
    throughput = found[header(bench.THROUGHPUT_HEADERS)]
    assert [(r[0], r[1], r[2]) for r in throughput] == [
        ("16", "2", "teacher"), ("16", "2", "student 7:1"), ("32", "1", "teacher"), ("32", "1", "student 7:1")
    ]  # fmt: skip
    for row in throughput:
        assert len(row) == len(bench.THROUGHPUT_HEADERS)
        assert number(row[3]) > 0 and number(row[4]) > 0
        assert all(number(x) > 0 for x in row[5].split(" / "))
        assert number(row[6]) >= 0 and number(row[7]) >= 0
        assert row[8] == "n/a (CPU) / n/a (CPU)"

    steps = found[header(bench.DISTILL_HEADERS)]
    assert [(r[0], r[1], r[2]) for r in steps] == [
        ("16", "2", "student 7:1"), ("16", "2", "student 7:1, reference loss"),
        ("32", "1", "student 7:1"), ("32", "1", "student 7:1, reference loss"),
    ]  # fmt: skip
    for row in steps:
        assert len(row) == len(bench.DISTILL_HEADERS)
        rate, step, teacher, student, loss, vs_teacher, mfu = (number(x) for x in row[3:10])
        assert min(rate, step, teacher, student, loss, vs_teacher) > 0 and mfu >= 0
        assert teacher + student + loss <= step + 0.2  # parts of one step (cells rounded to 0.1 ms)

    profile = found[header(["kernel", "calls", "self ms", "share"])]
    assert 1 <= len(profile) <= bench.PROFILE_ROWS
    assert all(number(r[2]) > 0 for r in profile)


def test_split_parts_lie_inside_the_step_and_hooks_are_removed() -> None:
    cfg = bench.model_config("tiny", 64)
    args = SimpleNamespace(plans=[7], dtype="fp32", compile_blocks=False)
    trainees = bench.build_models(args, cfg, torch.device("cpu"), checkpointing=True)
    teacher, student = trainees[0].model, trainees[1]
    settings = distill.read_stage_config(Path(__file__).resolve().parents[1] / "configs/qwen3-1.7b/stage2.yaml")
    module = distill.distillation_module(teacher, student.model, student.plan, settings, checkpointing=True)
    distill.freeze_teacher(module)
    batch = distill.make_batch(cfg.vocab_size, 1, 16, torch.device("cpu"))
    split = distill.measure_distillation(module, batch, distill.Clock(torch.device("cpu")), warmup=0, iters=1)
    parts = (split.teacher_ms, split.student_ms, split.loss_ms)
    assert min(parts) > 0 and sum(parts) <= split.step_ms
    assert sum(parts) >= 0.5 * split.step_ms  # what lies outside them is the batch split
    assert module.hparams.chunk_size == settings.loss["chunk_size"]
    for m in (teacher, student.model):
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_auto_batch_halves_until_the_step_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = []

    def step(module: object, batch: dict, loss_done: object = None) -> None:
        tried.append(batch["input_ids"].shape[0])
        if tried[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(distill, "distillation_step", step)
    modules = [SimpleNamespace(student=nn.Linear(2, 2))]
    assert distill.auto_batch(modules, 11, 8, 6, torch.device("cpu")) == 2
    assert tried == [4, 2]  # powers of two from the start down
    tried.clear()
    monkeypatch.setattr(distill, "distillation_step", lambda *a, **k: step(None, {"input_ids": torch.ones(9, 1)}))
    assert distill.auto_batch(modules, 11, 8, 4, torch.device("cpu")) is None


def test_flops_per_token_at_the_qwen3_shape() -> None:
    cfg = bench.model_config("qwen3-1.7b", 4096)
    with torch.device("meta"):
        teacher = bench.transformers.Qwen3ForCausalLM(cfg)
    plan = bench.plan_one_group_per_layer(cfg, 7)
    t, s = bench.Flops.of(teacher, bench.hh.HeadPlan.all_fa(cfg)), bench.Flops.of(teacher, plan)
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 6144 + 2 * 2048 + 2 * 128  # + 2 norms, q/k norms
    assert t.body_params == 28 * per_layer
    assert (t.fa_query_heads, s.fa_query_heads) == (28 * 16, 28 * 2)
    T = 4096
    assert t.forward(T) == 2 * t.body_params + 2 * 28 * 16 * 128 * T
    assert s.forward_backward(T) == 3 * s.forward(T)
    lm_head = 151936 * 2048
    assert bench.distillation_flops(t, s, T) == t.forward(T) + 2 * lm_head + s.forward_backward(T) + 6 * lm_head


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--plans", "5"], "ratio + 1 to divide"),
        (["--stage-config", "configs/qwen3-1.7b/stage3.yaml"], "not hydrahead_lit.lit.DistillationModule"),
        (["--stage-config", "no/such/stage2.yaml"], "does not exist"),
    ],
)
def test_bad_input_fails_before_building(extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench.main([*TINY, *extra])


@pytest.mark.parametrize(
    "extra",
    [["--batch", "0"], ["--batch", "many"], ["--lengths", "0"], ["--markdown", "no/such/dir/b.md"], ["--warmup", "-1"]],
)
def test_bad_arguments_are_refused(extra: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        bench.parse_args([*TINY, *extra])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_logit_losses_benchmark_on_cpu(tmp_path: Path) -> None:
    logit = importlib.import_module("bench_logit_losses")
    md = tmp_path / "benchmarks.md"
    argv = ["--device", "cpu", "--dtype", "fp32", "--tokens", "64", "--hidden", "8", "--vocab", "50"]
    printed = logit.main([*argv, "--chunk-size", "16", "--iters", "1", "--markdown", str(md)])
    assert md.read_text() == printed
    rows = tables(printed)["| path | ms a step | tokens/s | speed-up | peak GiB |"]
    assert [r[0] for r in rows] == ["autograd reference (chunks recomputed)", "gradients in the forward pass"]
    difference = float(re.search(r"between the paths: ([0-9.e+-]+)", printed).group(1))
    assert difference < 1e-5  # float32 logits on both paths
