"""Efficiency of a model *shape*: teacher vs HydraHead vs layer-wise vs all-LA, random weights.

Cache bytes, prefill time and decode speed depend on the architecture and the head plan, not on
trained weights, so this builds a randomly initialised teacher of a named shape, converts it with
each plan and runs :func:`hydrahead_lit.eval.efficiency.measure` on every model:

    python -m hydrahead_lit.eval.bench --shape qwen3-1.7b --lengths 4096 16384 65536 \\
        --dtype bfloat16 --device cuda -o bench.json

Plans (same KV-group budget logic as the pipeline's baselines): ``hydrahead`` keeps one KV group
per layer with full attention (LA:FA 7:1 for 8 KV groups), ``layerwise`` keeps every fourth layer
fully (3:1), ``all_la`` none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES: dict[str, dict] = {  # Qwen3 configs (public model cards), weights random
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1024),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
}  # fmt: skip
PLANS = ("teacher", "hydrahead", "layerwise", "all_la")


def build_teacher(shape: str, max_len: int, dtype: torch.dtype, device: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    config = Qwen3Config(**SHAPES[shape], max_position_embeddings=max_len, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen3ForCausalLM(config).to(dtype).eval()


def plan_for(name: str, config):
    import hydrahead_lit as hh

    layers = config.num_hidden_layers
    if name == "hydrahead":
        return hh.HeadPlan.from_fa_groups(config, {i: [0] for i in range(layers)})
    if name == "layerwise":
        return hh.HeadPlan.layerwise(config, list(range(3, layers, 4)))
    if name == "all_la":
        return hh.HeadPlan.all_la(config)
    raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")


def run(shape: str, lengths: list[int], plans: list[str], dtype: str, device: str, decode_tokens: int,
        repeats: int) -> dict:  # fmt: skip
    import hydrahead_lit as hh
    from hydrahead_lit.eval.efficiency import measure
    from hydrahead_lit.eval.load import _DTYPES

    teacher = build_teacher(shape, max(lengths) + decode_tokens, _DTYPES[dtype], device)
    results: dict = {"shape": shape, "dtype": dtype, "device": _device_name(device), "torch": torch.__version__,
                     "models": {}}  # fmt: skip
    for name in plans:
        model = teacher if name == "teacher" else hh.convert(teacher, plan_for(name, teacher.config)).eval()
        per_len: dict = {}
        for n in lengths:
            try:
                per_len[str(n)] = measure(model, [n], decode_tokens, repeats)[n]
            except torch.OutOfMemoryError:  # record it and go on with the other models
                per_len[str(n)] = {"error": "out of memory"}
                torch.cuda.empty_cache()
        results["models"][name] = per_len
        print(f"measured {name}", file=sys.stderr, flush=True)
        if model is not teacher:
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return results


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def table(results: dict) -> str:
    from hydrahead_lit.eval.report import human_bytes

    lines = [f"{results['shape']}, {results['dtype']}, {results['device']}, batch 1", "",
             "| model | length | cache | teacher KV | prefill (ms) | decode (tok/s) | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, per_len in results["models"].items():
        for n, f in per_len.items():
            if "error" in f:
                lines.append(f"| {name} | {n} | {f['error']} | | | | |")
                continue
            lines.append(f"| {name} | {n} | {human_bytes(f['cache_bytes'])} | {human_bytes(f['teacher_kv_bytes'])} | "
                         f"{1000 * f['prefill_s']:.1f} | {f['decode_tokens_per_s']:.1f} | "
                         f"{human_bytes(f.get('peak_memory_bytes'))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hydrahead_lit.eval.bench", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    p.add_argument("--plans", nargs="+", default=list(PLANS), choices=PLANS)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("-o", "--output", help="JSON file for the figures")
    args = p.parse_args(argv)
    res = run(args.shape, args.lengths, args.plans, args.dtype, args.device, args.decode_tokens, args.repeats)
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
