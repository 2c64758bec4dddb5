"""The stage-2 logit losses alone: `logit_losses` (gradients in the forward pass) vs its autograd reference.

One timed step is the losses' forward and backward from final hidden states: KL(teacher || student) and
CE over chunks of tokens, the teacher's head frozen, the student's trained, as `DistillationModule` runs
them. Reported: ms per step (median), tokens/s, the speed-up, peak memory on CUDA, and the largest
difference between the two paths' loss and gradients (relative in norm). Defaults are the Qwen3-1.7B
shape at 64K tokens a step; `--markdown FILE` appends the table with card, versions and command.

    python benchmarks/bench_logit_losses.py --device cuda --markdown docs/benchmarks.md
    python benchmarks/bench_logit_losses.py --device cpu --tokens 4096 --hidden 576 --vocab 49152  # SmolLM2
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_student_step import append_markdown, device_name, version  # noqa: E402

from hydrahead_lit.lit.linear_losses import logit_losses  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    student, teacher = nn.Linear(args.hidden, args.vocab, bias=False), nn.Linear(args.hidden, args.vocab, bias=False)
    student.to(device, dtype)
    teacher.to(device, dtype).requires_grad_(False)
    h = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype)
    h_t = (h.float() + 0.5 * torch.randn(args.tokens, args.hidden, generator=g).to(device)).to(dtype)
    targets = torch.randint(0, args.vocab, (1, args.tokens), generator=g).to(device)
    return student, teacher, h[None].requires_grad_(True), h_t[None], targets


def step(fused: bool, inputs: tuple, args: argparse.Namespace) -> tuple[torch.Tensor, list[torch.Tensor]]:
    student, teacher, h, h_t, targets = inputs
    loss, _, _ = logit_losses(
        h, student, targets, None, h_t, teacher, args.temperature, args.chunk_size,
        ce_weight=args.ce_weight, kd_weight=1.0, fused=fused,
    )  # fmt: skip
    grads = torch.autograd.grad(loss, [h, student.weight])
    return loss.detach(), list(grads)


def timed(fused: bool, inputs: tuple, args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """(median ms of `args.iters` steps after one warm-up, peak GiB on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step(fused, inputs, args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        sync()
        t0 = time.perf_counter()
        step(fused, inputs, args)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def environment_line(device: torch.device) -> str:
    return f"{device_name(device)}; torch {torch.__version__}, triton {version('triton')}"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=65536, help="tokens per step (batch x length)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=0.0, help="stage 2 of the Qwen3 config: KL only")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--markdown", type=Path, help="append the table, as a new section, to this file")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    device = torch.device(args.device)
    inputs = make_inputs(args, device)
    ref_loss, ref_grads = step(False, inputs, args)
    loss, grads = step(True, inputs, args)
    errors = [rel(loss, ref_loss)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
    ref_ms, ref_peak = timed(False, inputs, args, device)
    ms, peak = timed(True, inputs, args, device)
    gib = lambda x: "n/a (CPU)" if x is None else f"{x:.1f}"  # noqa: E731
    rows = [
        ("autograd reference (chunks recomputed)", ref_ms, ref_peak),
        ("gradients in the forward pass", ms, peak),
    ]
    lines = [
        f"## Logit losses alone ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {environment_line(device)})",
        "",
        f"Command, from the project root: `{shlex.join(['python', 'benchmarks/bench_logit_losses.py', *raw])}`",
        "",
        f"{args.tokens:,} tokens a step, hidden {args.hidden}, vocabulary {args.vocab:,}, {args.dtype}, chunk "
        f"{args.chunk_size}, temperature {args.temperature}, ce_weight {args.ce_weight}, kd_weight 1; "
        f"median of {args.iters} after 1 warm-up. Largest relative difference (in norm) between the paths: "
        f"{max(errors):.1e} (loss {errors[0]:.1e}, d hidden {errors[1]:.1e}, d weight {errors[2]:.1e}).",
        "",
        "| path | ms a step | tokens/s | speed-up | peak GiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, t, pk in rows:
        lines.append(f"| {name} | {t:,.1f} | {args.tokens / t * 1e3:,.0f} | {ref_ms / t:.2f}x | {gib(pk)} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.markdown is not None:
        append_markdown(args.markdown, text)
    return text


if __name__ == "__main__":
    main()
