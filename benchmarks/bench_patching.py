"""Activation patching of every KV group: the fast path (`patching_effects`) against the reference.

The reference runs one whole forward per (layer, KV group) and probe batch; the fast path starts each
patched forward at its layer on the recorded unpatched activations and batches a layer's groups. Both run
on the same stage-1 twin model and probes (the selection's: passkey, single and multi-key NIAH) in float32,
as the selection callback does; the table gives the time of each, the speed-up and the largest difference
of their NLL effects.

    python benchmarks/bench_patching.py --layers 8 --probes 4 --batch-size 4   # CPU, a few minutes: a random
                                                          # model of SmolLM2-135M's layer shape, 8 layers
    python benchmarks/bench_patching.py --teacher models/smollm2-135m    # or a real teacher (a directory or .gguf)
    python benchmarks/bench_patching.py --length 1024 --probes 24 --markdown patching.md   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydrahead_lit as hh  # noqa: E402
from hydrahead_lit.experiments.environment import environment  # noqa: E402
from hydrahead_lit.selection import batch_probes, make_probes, patching_effects  # noqa: E402
from hydrahead_lit.selection.patching import patching_effects_reference  # noqa: E402


def smollm2_shaped(vocab_size: int, layers: int = 30) -> torch.nn.Module:
    """A random LlamaForCausalLM with SmolLM2-135M's layers (30 x 9 heads, 3 KV heads, hidden 576)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=1e5, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg)


def timed(fn, device: torch.device) -> tuple[dict, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a model directory or .gguf file (default: a random SmolLM2-shaped model)")
    p.add_argument("--length", type=int, default=256, help="probe length in tokens (the SmolLM2 config: 1024)")
    p.add_argument("--probes", type=int, default=8, help="number of probes (the SmolLM2 config: 24)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=30, help="layers of the random model (fewer: a quick CPU run)")
    p.add_argument("--max-rows", type=int, default=32, help="rows per forward of the fast path")
    p.add_argument("--markdown", help="write the table to this file too")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.teacher:
        from hydrahead_lit.teachers.load import load_teacher, load_teacher_tokenizer

        teacher, tok, what = load_teacher(args.teacher), load_teacher_tokenizer(args.teacher), args.teacher
    else:
        from hydrahead_lit.data.demo import demo_tokenizer

        torch.manual_seed(0)
        tok = demo_tokenizer()
        teacher = smollm2_shaped(len(tok), args.layers)
        what = f"random, SmolLM2-135M's layer shape, {args.layers} layers, demo tokenizer"
    twin = hh.convert(teacher.eval(), None, twins=True).to(device).eval()
    probes = make_probes(tok, ["niah_multikey", "niah_single", "passkey"], args.length, args.probes, seed=0)
    batches = batch_probes(probes, args.batch_size)
    L = twin.config.num_hidden_layers
    G = twin.config.num_key_value_heads

    patching_effects(twin, batches[:1], max_rows=args.max_rows)  # warm-up (kernels, allocator)
    ref, t_ref = timed(lambda: patching_effects_reference(twin, batches), device)
    fast, t_fast = timed(lambda: patching_effects(twin, batches, max_rows=args.max_rows), device)
    diff = float((fast["nll"] - ref["nll"]).abs().max())
    acc_diff = float((fast["accuracy"] - ref["accuracy"]).abs().max())
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"

    env = environment()
    lines = [
        f"- device: {env['device']} ({platform.machine()}, {torch.get_num_threads()} CPU threads); "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("device",)),
        f"- model: {what}; {L} layers x {G} KV groups; {len(probes)} probes of {args.length} tokens, "
        f"batches of {args.batch_size}; float32",
        f"- command: `python benchmarks/bench_patching.py {shlex.join(sys.argv[1:])}`",
        "",
        "| path | forwards per batch | time (s) | speed-up | max NLL-effect diff | max accuracy-effect diff |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| reference: a whole forward per group | {1 + L * G} of {L} layers | {t_ref:.2f} | 1.00 | | |",
        f"| fast: replayed prefix, groups batched (max_rows {args.max_rows}) | 1 + {L} of {L}..1 layers "
        f"| {t_fast:.2f} | {t_ref / t_fast:.2f} | {diff:.2e} | {acc_diff:.2e} |",
        "",
        f"Peak GPU memory: {peak}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
