"""Teacher vs HydraHead student: forward and forward+backward throughput of a Qwen3-1.7B-shaped model.

Random weights (the timing does not depend on them), bf16, one GPU. The loss is the mean square of the
last hidden state, so the lm_head/vocabulary cost (the same for both models) is left out and the table
compares what conversion changes: the attention layers. Prints a Markdown table.

    python benchmarks/bench_student_step.py --lengths 4096 16384 --plans 7 3
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import transformers

import hydrahead_lit as hh
from hydrahead_lit.ops.la_backend import select_la_backend


def qwen3_1p7b_config(max_len: int) -> transformers.Qwen3Config:
    # Shapes of Qwen3-1.7B (config.json of the public checkpoint); weights are random.
    return transformers.Qwen3Config(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0,
        max_position_embeddings=max(max_len, 40960), tie_word_embeddings=True, rms_norm_eps=1e-6,
    )


def plan_one_group_per_layer(config, ratio: int) -> hh.HeadPlan:
    """`ratio`:1 spread evenly: the same number of FA groups in every layer (group 0, 1, ...)."""
    n_layers, n_kv = config.num_hidden_layers, config.num_key_value_heads
    per_layer = n_kv // (ratio + 1)
    return hh.HeadPlan.from_fa_groups(config, {i: list(range(per_layer)) for i in range(n_layers)})


def time_ms(fn, warmup: int = 2, iters: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(model, ids: torch.Tensor) -> tuple[float, float, float]:
    body = model.model

    def fwd():
        with torch.no_grad():
            body(input_ids=ids, use_cache=False)

    def fwd_bwd():
        out = body(input_ids=ids, use_cache=False).last_hidden_state
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    f = time_ms(fwd)
    fb = time_ms(fwd_bwd, warmup=1, iters=3)
    return f, fb, torch.cuda.max_memory_allocated() / 2**30


def profile_forward(model, ids: torch.Tensor) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model.model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.model(input_ids=ids, use_cache=False)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--plans", type=int, nargs="+", default=[7, 3], help="LA:FA ratios")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one student forward")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    cfg = qwen3_1p7b_config(max(args.lengths))
    with torch.device("cuda"):
        # train() so that activation checkpointing (active in training mode only) applies; dropout is 0
        teacher = transformers.Qwen3ForCausalLM(cfg).to(torch.bfloat16).train()
    dev = torch.device("cuda")
    print(f"LA backend: training={select_la_backend(dev, True)}, inference={select_la_backend(dev, False)}")
    results: dict[tuple[int, str], tuple | None] = {}
    names = ["teacher (SDPA, 16 FA heads)"] + [f"student {r}:1" for r in args.plans]
    for name, ratio in zip(names, [None, *args.plans]):
        # one model on the GPU at a time (besides the teacher the students are converted from)
        model = teacher if ratio is None else hh.convert(teacher, plan_one_group_per_layer(cfg, ratio)).train()
        if args.checkpointing:
            model.gradient_checkpointing_enable()
        for T in args.lengths:
            ids = torch.randint(0, cfg.vocab_size, (1, T), device="cuda", generator=None)
            try:
                results[T, name] = measure(model, ids)
            except torch.OutOfMemoryError:
                results[T, name] = None
                torch.cuda.empty_cache()
        if args.profile and model is not teacher:
            profile_forward(model, torch.randint(0, cfg.vocab_size, (1, args.lengths[0]), device="cuda"))
        if model is not teacher:
            del model
            torch.cuda.empty_cache()
    rows = []
    for T in args.lengths:
        base = results[T, names[0]]
        for name in names:
            r = results[T, name]
            if r is None or base is None:
                rows.append((T, name, "OOM", "", "", "", ""))
                continue
            f, fb, mem = r
            rows.append((T, name, f"{f:.1f}", f"{fb:.1f}", f"{T / f * 1e3:,.0f}", f"{T / fb * 1e3:,.0f}",
                         f"{f / base[0]:.2f} / {fb / base[1]:.2f}  ({mem:.1f} GiB)"))
    print("\n| T | model | fwd ms | fwd+bwd ms | fwd tok/s | fwd+bwd tok/s | vs teacher (fwd / fwd+bwd), peak mem |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


if __name__ == "__main__":
    main()
