"""The layer's fused input projection at widths a multiple of 8 or not: one GEMM, forward and forward+backward.

At Qwen3-1.7B with one FA KV group in eight (7:1) the projection of a layer is 5,916 outputs wide (FA q|k|v,
14 LA heads' q|k|v, 14 decay and 14 beta logits): not a multiple of 8, which sends cuBLAS to its
2-element-aligned kernels. `fused_inputs.PROJECTION_ALIGN` pads it to 5,952. This times `F.linear` of
`--tokens` rows of `--hidden` at each width in `--widths` (bf16, `triton.testing.do_bench`, median);
4,096 is the teacher's q|k|v.

    python benchmarks/bench_projection_width.py [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_student_step import append_markdown, device_name, version  # noqa: E402


def time_width(tokens: int, hidden: int, width: int) -> tuple[float, float]:
    from triton.testing import do_bench

    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(width, hidden, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    dy = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    forward = do_bench(lambda: F.linear(x, w), return_mode="median")
    both = do_bench(lambda: F.linear(x, w).backward(dy), grad_to_none=[x, w], return_mode="median")
    return forward, both


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=65536, help="rows: batch x length (16 x 4K)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--widths", type=int, nargs="+", default=[5916, 5920, 5952, 4096])
    p.add_argument("--markdown", type=Path, help="append the table, as a new section, to this file")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    rows = ["| width | forward ms | forward+backward ms | forward TFLOP/s |", "| --- | --- | --- | --- |"]
    for width in args.widths:
        f, fb = time_width(args.tokens, args.hidden, width)
        rows.append(f"| {width:,} | {f:.3f} | {fb:.3f} | {2 * args.tokens * args.hidden * width / f / 1e9:.0f} |")
        print(rows[-1], flush=True)
    device = torch.device("cuda")
    text = "\n".join([
        f"## Fused projection width ({device_name(device)}; torch {torch.__version__}, triton {version('triton')})",
        "", f"`python {shlex.join(['benchmarks/bench_projection_width.py', *sys.argv[1:]])}`: {args.tokens:,} x "
        f"{args.hidden} input, bf16.", "", *rows, "",
    ])  # fmt: skip
    if args.markdown:
        append_markdown(args.markdown, text)


if __name__ == "__main__":
    main()
