"""Generation speed of a model *shape*: teacher vs HydraHead (and layer-wise, all-LA), eager vs fast decoding.

Cache bytes, prefill time and decode speed depend on the architecture and the head plan, not on trained
weights, so this builds a randomly initialised teacher of a named shape, converts it with each plan and
measures every (model, decode path) at every (context, batch) cell with
:func:`hydrahead_lit.eval.efficiency.measure_length`:

    python -m hydrahead_lit.eval.bench --shape qwen3-1.7b --dtype bfloat16 --device cuda \\
        --cells 4096x1 32768x1 131072x1 32768x16 131072x16 -o bench.json --markdown bench.md

Rows: ``teacher eager`` (its forward per token, dynamic cache), ``teacher fast`` (transformers'
StaticCache, compiled forward, one CUDA graph per step, the same decode attention as the student's FA
heads), ``hydrahead eager`` and ``hydrahead fast`` (`FastDecoder`: static hybrid cache, fused step, CUDA
graph). Columns: prefill ms, decode ms per step, tokens/s over the batch, the share of the bandwidth limit
(bytes one step must read / the copy bandwidth measured here), cache bytes, peak memory. A cell whose
teacher KV cache alone exceeds the free memory is reported, not run. `--tiny` runs a tiny shape on the
CPU in seconds (a check that every path works, not a measurement).

Plans (the pipeline's baselines' budget logic): ``hydrahead`` keeps one KV group per layer with full
attention (LA:FA 7:1 for 8 KV groups), ``layerwise`` keeps every fourth layer fully (3:1), ``all_la`` none.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
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
PATHS = ("eager", "fast")
ISSUE_CELLS = ("4096x1", "32768x1", "131072x1", "32768x16", "131072x16")
TINY_CELLS = ("48x1", "40x2")


def parse_cell(text: str) -> tuple[int, int]:
    """'32768x16' -> (context 32768, batch 16)."""
    try:
        length, batch = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a cell is CONTEXTxBATCH, e.g. 32768x16; got {text!r}") from None
    if length < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"context and batch must be >= 1; got {text!r}")
    return length, batch


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


def _fits(model, length: int, batch: int, decode_tokens: int, device: str) -> str | None:
    """Why the cell cannot run (its cache alone exceeds the free device memory), or None."""
    from hydrahead_lit.eval.efficiency import teacher_kv_bytes
    from hydrahead_lit.eval.report import human_bytes
    from hydrahead_lit.modeling.student import is_student

    if not device.startswith("cuda"):
        return None
    dtype = next(model.parameters()).dtype
    n = length + decode_tokens + 1
    need = model.cache_bytes(batch, n, dtype)["total"] if is_student(model) else teacher_kv_bytes(
        model.config, batch, n, dtype)  # fmt: skip
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return None if need < free else f"does not fit: cache {human_bytes(need)}, free {human_bytes(free)}"


def run(shape: str, cells: list[tuple[int, int]], plans: list[str], paths: list[str], dtype: str, device: str,
        decode_tokens: int, repeats: int, compile: bool | None = None) -> dict:  # fmt: skip
    import hydrahead_lit as hh
    from hydrahead_lit.eval.efficiency import copy_bandwidth, measure_length
    from hydrahead_lit.eval.load import _DTYPES

    _allow_recompiles(64)
    teacher = build_teacher(shape, max(n for n, _ in cells) + decode_tokens + 1, _DTYPES[dtype], device)
    bandwidth = copy_bandwidth(device)
    results: dict = {"shape": shape, "dtype": dtype, "device": _device_name(device), "torch": torch.__version__,
                     "transformers": _version("transformers"), "copy_bandwidth_bytes_per_s": bandwidth,
                     "rows": []}  # fmt: skip
    for name in plans:
        model = teacher if name == "teacher" else hh.convert(teacher, plan_for(name, teacher.config)).eval()
        for path in paths:
            for length, batch in cells:
                row = {"model": name, "path": path, "context": length, "batch": batch}
                if (why := _fits(model, length, batch, decode_tokens, device)) is not None:
                    results["rows"].append({**row, "error": why})
                    continue
                try:
                    fig = measure_length(model, length, decode_tokens, repeats, batch=batch, path=path,
                                         compile=compile, bandwidth=bandwidth)  # fmt: skip
                    results["rows"].append({**row, **fig})
                except torch.OutOfMemoryError:  # record it and go on with the other cells
                    results["rows"].append({**row, "error": "out of memory"})
                except Exception as err:  # a failed capture or compilation: recorded, the other cells still run
                    traceback.print_exc(file=sys.stderr)
                    results["rows"].append({**row, "error": f"{type(err).__name__}: {err}"[:200]})
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                print(f"measured {name} {path} {length}x{batch}", file=sys.stderr, flush=True)
        if model is not teacher:
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    _agreement(results["rows"])
    return results


def _allow_recompiles(limit: int) -> None:
    """Every (batch, capacity) cell compiles the fast steps for its shapes: let torch.compile keep them all
    (past its default limit it would run later cells uncompiled)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older one
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


def _agreement(rows: list[dict]) -> None:
    """Per fast row, how many leading greedy tokens equal the eager row's (same model and cell): a check that
    the fast path decodes the same function (random weights in bf16 make near-ties, so late flips can occur)."""
    eager = {(r["model"], r["context"], r["batch"]): r for r in rows if r["path"] == "eager" and "tokens" in r}
    for r in rows:
        ref = eager.get((r["model"], r["context"], r["batch"]))
        if r["path"] != "fast" or "tokens" not in r or ref is None:
            continue
        same = 0
        for a, b in zip(zip(*r["tokens"]), zip(*ref["tokens"])):
            if a != b:
                break
            same += 1
        r["tokens_equal_eager"] = same


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def table(results: dict) -> str:
    from hydrahead_lit.eval.report import human_bytes

    bw = results["copy_bandwidth_bytes_per_s"]
    lines = [f"{results['shape']}, {results['dtype']}, {results['device']}, torch {results['torch']}, transformers "
             f"{results['transformers']}; copy bandwidth {bw / 1e9:.0f} GB/s", "",
             "| model | path | context | batch | prefill (ms) | decode (ms/step) | tokens/s | % of bandwidth limit | "
             "cache | peak memory | greedy = eager |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results["rows"]:
        head = f"| {r['model']} | {_path_name(r)} | {r['context']} | {r['batch']} |"
        if "error" in r:
            lines.append(f"{head} {r['error'].replace('|', '/')} | | | | | | |")
            continue
        pct = r.get("bandwidth_limit_fraction")
        pct = "" if pct is None else f"{100 * pct:.1f}"
        same = "" if r.get("tokens_equal_eager") is None else f"{r['tokens_equal_eager']}/{len(r['tokens'][0])}"
        lines.append(f"{head} {1000 * r['prefill_s']:.1f} | {1000 * r['decode_s_per_step']:.2f} | "
                     f"{r['decode_tokens_per_s']:.1f} | {pct} | {human_bytes(r['cache_bytes'])} | "
                     f"{human_bytes(r.get('peak_memory_bytes'))} | {same} |")  # fmt: skip
    lines += ["", *_ratios(results["rows"])]
    return "\n".join(lines) + "\n"


def _path_name(r: dict) -> str:
    if r["path"] == "eager" or "graph" not in r:
        return r["path"]
    parts = ["static"] + (["graph"] if r["graph"] else []) + (["compiled"] if r["compiled"] else [])
    return "fast (" + " + ".join(parts) + ")"


def _ratios(rows: list[dict]) -> list[str]:
    """Decode speed of every student's fast path over the teacher's fast and eager paths, per cell."""
    speed = {(r["model"], r["path"], r["context"], r["batch"]): r["decode_tokens_per_s"] for r in rows
             if "error" not in r}  # fmt: skip
    out = [
        "| model | context | batch | fast / teacher fast | fast / teacher eager |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (model, path, n, b), v in speed.items():
        if model == "teacher" or path != "fast":
            continue
        ratios = [speed.get(("teacher", p, n, b)) for p in ("fast", "eager")]
        cells = " | ".join("" if t is None else f"{v / t:.2f}x" for t in ratios)
        out.append(f"| {model} | {n} | {b} | {cells} |")
    return out if len(out) > 2 else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hydrahead_lit.eval.bench", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU, in seconds: checks every path")
    p.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    p.add_argument("--cells", type=parse_cell, nargs="+", help=f"CONTEXTxBATCH (default {' '.join(ISSUE_CELLS)})")
    p.add_argument("--lengths", type=int, nargs="+", help="contexts at batch 1 (instead of --cells)")
    p.add_argument("--plans", nargs="+", default=["teacher", "hydrahead"], choices=PLANS)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="fast paths without torch.compile (graph only)")
    p.add_argument("-o", "--output", help="JSON file for the figures")
    p.add_argument("--markdown", help="markdown file for the table")
    args = p.parse_args(argv)
    if args.tiny:
        args.shape, args.device, args.dtype = "tiny", "cpu", "float32"
        args.decode_tokens, args.repeats = min(args.decode_tokens, 4), 1
    cells = args.cells or ([(n, 1) for n in args.lengths] if args.lengths else None)
    cells = cells or [parse_cell(c) for c in (TINY_CELLS if args.tiny else ISSUE_CELLS)]
    for target in (args.output, args.markdown):
        if target and Path(target).exists():
            p.error(f"{target} exists: choose a new file (nothing written is overwritten)")
    res = run(args.shape, cells, args.plans, args.paths, args.dtype, args.device, args.decode_tokens, args.repeats,
              compile=False if args.no_compile else None)  # fmt: skip
    text = table(res)
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
