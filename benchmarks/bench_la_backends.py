"""Check and time the gated delta rule backends on one CUDA GPU.

Builds bf16 inputs, checks fla's chunk kernel against the PyTorch chunked reference (forward; the
backward only where fla's gated backward is correct for this GPU and Triton), reports what
``select_la_backend`` picks, times each path with ``triton.testing.do_bench`` (median) and prints a
Markdown table (also written to ``--markdown`` when given).

    python benchmarks/bench_la_backends.py --markdown la_backends.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import shlex
import sys

import torch
import torch.nn.functional as F

from hydrahead_lit.ops import la_backend as lb
from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _inputs(B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """The layer's shapes and value ranges: L2-normalized q/k, decay in about (-1.4, 0), beta in (0, 1)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    return {
        "q": F.normalize(randn(B, T, H, K), dim=-1).to(dtype),
        "k": F.normalize(randn(B, T, H, K), dim=-1).to(dtype),
        "v": randn(B, T, H, V).to(dtype),
        "g": F.logsigmoid(randn(B, T, H) + 2.0).float(),
        "beta": torch.sigmoid(randn(B, T, H)).to(dtype),
    }


def _errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max abs value of the expected tensor)."""
    err = (actual.float() - expected.float()).abs().max().item()
    return err, err / expected.float().abs().max().item()


def _grads(fn, x: dict, h0: torch.Tensor, do: torch.Tensor, ds: torch.Tensor) -> dict:
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in {**x, "initial_state": h0}.items()}
    o, s = fn(**leaves, output_final_state=True)
    loss = (o.float() * do).sum() + (s * ds).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--H", type=int, default=16)
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--V", type=int, default=128)
    parser.add_argument("--markdown", help="also write the report (Markdown) to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    from triton.testing import do_bench

    dev = torch.device("cuda")
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    x = _inputs(B, T, H, K, V, torch.bfloat16)
    h0 = torch.randn(B, H, K, V, device=dev, generator=torch.Generator(device="cuda").manual_seed(1))
    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    cap = torch.cuda.get_device_capability(dev)
    say(f"- card: {torch.cuda.get_device_name(dev)} (sm_{cap[0]}{cap[1]})")
    say(
        f"- torch {torch.__version__}, triton {_version('triton')}, fla-core {_version('fla-core')}, "
        f"python {platform.python_version()}"
    )
    say(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    say(f"- shapes: B={B}, T={T}, H={H} (q and KV heads), K={K}, V={V}; inputs bf16, g float32")
    safe = lb.fla_gated_backward_is_safe(dev)
    say(
        f"- select_la_backend: inference -> `{lb.select_la_backend(dev, False)}`, "
        f"training -> `{lb.select_la_backend(dev, True)}`; fla_gated_backward_is_safe = {safe}"
    )
    if (why := lb._fla_backward_refusal(dev)) is not None:
        say(f"  ({why})")
    say()

    # Correctness: the reference computes in float32 from the same bf16 inputs.
    say("| check (fla vs PyTorch reference, bf16 inputs) | max abs err | max abs err / max abs ref |")
    say("| --- | --- | --- |")
    with torch.no_grad():
        o, s = lb.gated_delta_rule(**x, initial_state=h0, output_final_state=True, backend="fla")
        o_ref, s_ref = chunk_gated_delta_rule_ref(**x, initial_state=h0, output_final_state=True)
    for name, a, b in (("forward output", o, o_ref), ("final state", s, s_ref)):
        err, rel = _errors(a, b)
        say(f"| {name} | {err:.3e} | {rel:.3e} |")
    if safe:
        do, ds = torch.randn_like(o_ref), torch.randn_like(s_ref)
        g_fla = _grads(lambda **kw: lb.gated_delta_rule(**kw, backend="fla"), x, h0, do, ds)
        g_ref = _grads(chunk_gated_delta_rule_ref, x, h0, do, ds)
        for name in g_ref:
            err, rel = _errors(g_fla[name], g_ref[name])
            say(f"| grad {name} | {err:.3e} | {rel:.3e} |")
    else:
        say("| backward | not checked: fla's gated backward is refused on this GPU/Triton | |")
    say()

    # Timings (no initial state: the training case).
    def fla_fwd():
        with torch.no_grad():
            lb.gated_delta_rule(**x, backend="fla")

    def ref_fwd():
        with torch.no_grad():
            chunk_gated_delta_rule_ref(**x)

    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items()}
    do = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16)

    def fwd_bwd(fn):
        def run():
            o, _ = fn(**leaves)
            torch.autograd.grad(o, list(leaves.values()), do)

        return run

    rows = [("fla chunk, forward", fla_fwd), ("PyTorch reference, forward", ref_fwd)]
    if safe:
        fla_train = fwd_bwd(lambda **kw: lb.gated_delta_rule(**kw, backend="fla"))
        rows.append(("fla chunk, forward+backward", fla_train))
    rows.append(("PyTorch reference, forward+backward", fwd_bwd(chunk_gated_delta_rule_ref)))
    say("| path | median ms |")
    say("| --- | --- |")
    for name, fn in rows:
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        say(f"| {name} | {ms:.3f} |")
    say(f"\npeak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
