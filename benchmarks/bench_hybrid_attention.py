"""Check and time the fused hybrid attention op on one CUDA GPU, in one invocation.

1. Correctness in bf16 against the PyTorch references evaluated in float32: the Triton gated delta
   rule (output, final state, every gradient) on the stressed input family of
   ``benchmarks/check_la_stress.py`` (its own tolerance) and on correlated keys, and the hybrid op
   (GQA ratios 1 and 2, T not a multiple of the 64-step chunk, correlated LA keys). Relative error
   ``|x - ref| / |ref|`` (Frobenius) must be <= 1e-2, no NaN.
2. A model-level check: one training step of a tiny HydraHead student with the ``"triton"`` LA
   backend against the ``"torch"`` one (loss and gradients).
3. Timings (``triton.testing.do_bench``, median, ms), B in ``--batch`` (default 1), H=16, D=128, plans 7:1
   and 3:1:
   (a) this op, (b) the naive composition (index the heads out, SDPA + fla, fusion, index back),
   (c) SDPA over all 16 heads, (d) the ideal: SDPA on the FA heads alone + the faster LA kernel
   (fla or ours) on the LA heads alone, timed separately and summed. fla's gated backward is timed
   with its Hopper/Triton guard bypassed: its gradients are then unreliable, so timing only.

    python benchmarks/bench_hybrid_attention.py --markdown hybrid.md [--lengths 4096 16384 65536] [--batch 1 8]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import shlex
import sys
import traceback

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import hydrahead_lit.kernels.gated_delta_rule as gdn_mod
from hydrahead_lit.kernels.gated_delta_rule import chunk_gated_delta_rule_triton
from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton
from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref
from hydrahead_lit.ops.hybrid_attention import hybrid_attention_ref

TOL = 1e-2
FAILURES: list[str] = []


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _report(what: str, errs: dict[str, float]) -> None:
    bad = [n for n, e in errs.items() if not e <= TOL]
    FAILURES.extend(f"{what}:{n}" for n in bad)
    print(f"{'FAIL' if bad else 'ok  '} {what}: " + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()), flush=True)


def _la_inputs(B, T, H, D, dtype, gen):
    def randn(*s):
        return torch.randn(*s, device="cuda", generator=gen)

    # Keys share a direction, as a real model's do (k = normalize(0.8 shared + 0.2 noise)).
    keys = F.normalize(0.8 * randn(B, 1, H, D) + 0.2 * randn(B, T, H, D), dim=-1)
    return [
        F.normalize(randn(B, T, H, D), dim=-1).to(dtype),
        keys.to(dtype),
        randn(B, T, H, D).to(dtype),
        F.logsigmoid(randn(B, T, H) + 2.0).float(),
        torch.sigmoid(randn(B, T, H)).to(dtype),
    ]


def check_gdn(B: int, T: int, H: int, D: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(T)
    xs = _la_inputs(B, T, H, D, torch.bfloat16, gen) + [torch.randn(B, H, D, D, device="cuda", generator=gen)]
    xs = [x.requires_grad_() for x in xs]
    ref_in = [x.detach().float().requires_grad_() for x in xs]
    o, ht = chunk_gated_delta_rule_triton(*xs[:5], initial_state=xs[5], output_final_state=True)
    o_r, ht_r = chunk_gated_delta_rule_ref(*ref_in[:5], initial_state=ref_in[5], output_final_state=True)
    do, dht = torch.randn_like(o_r), torch.randn_like(ht_r)
    grads = torch.autograd.grad((o.float() * do).sum() + (ht * dht).sum(), xs)
    grads_r = torch.autograd.grad((o_r * do).sum() + (ht_r * dht).sum(), ref_in)
    errs = {"o": _rel(o, o_r), "ht": _rel(ht, ht_r)}
    errs |= {f"d{n}": _rel(a, b) for n, a, b in zip(["q", "k", "v", "g", "beta", "h0"], grads, grads_r)}
    _report(f"gdn B={B} T={T} H={H} D={D}", errs)


def _hybrid_inputs(B, T, Hfa, Hkv, Hla, D, dtype, gen):
    def randn(*s):
        return torch.randn(*s, device="cuda", generator=gen)

    q, k, v, g, beta = _la_inputs(B, T, Hla, D, dtype, gen)
    fa = [randn(B, T, Hfa, D).to(dtype), randn(B, T, Hkv, D).to(dtype), randn(B, T, Hkv, D).to(dtype)]
    gains = [
        torch.rand(Hfa, device="cuda", generator=gen) + 0.5,
        torch.rand(Hla, D, device="cuda", generator=gen) + 0.5,
    ]
    return fa + [q, k, v, g, beta] + gains


def check_hybrid(B: int, T: int, Hfa: int, Hkv: int, Hla: int, D: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(T + Hfa)
    xs = [x.requires_grad_() for x in _hybrid_inputs(B, T, Hfa, Hkv, Hla, D, torch.bfloat16, gen)]
    ref_in = [x.detach().float().requires_grad_() for x in xs]
    out = hybrid_attention_triton(*xs)
    ref = hybrid_attention_ref(*ref_in)
    dout = torch.randn_like(ref)
    used = [i for i, x in enumerate(xs) if x.numel()]  # an all-LA layer has empty FA inputs
    grads = torch.autograd.grad(out, [xs[i] for i in used], dout.to(out.dtype))
    grads_r = torch.autograd.grad(ref, [ref_in[i] for i in used], dout)
    names = [["q_fa", "k_fa", "v_fa", "q_la", "k_la", "v_la", "g", "beta", "fa_gain", "la_weight"][i] for i in used]
    errs = {"out": _rel(out, ref)} | {f"d{n}": _rel(a, b) for n, a, b in zip(names, grads, grads_r)}
    _report(f"hybrid B={B} T={T} Hfa={Hfa} Hkv={Hkv} Hla={Hla}", errs)


def check_stress_family() -> None:
    """The stressed input family (correlated and identical keys, extreme gates), bf16, B=2, T=4000."""
    from benchmarks.check_la_stress import check

    _, failures = check(B=2, T=4000, H=4, D=128)
    FAILURES.extend(f"stress:{f}" for f in failures)


def check_model_step() -> None:
    """One training step of a tiny Qwen3 HydraHead student in bf16: the 'triton' LA backend and the
    'torch' one, each against the 'torch' backend on a float32 copy of the same student.

    A whole bf16 model step moves gradients by about 2e-2 (relative) from float32 with any backend
    (measured on CPU for 'torch': 1.8e-2 overall, 4e-2 for the worst parameter), so the check is that
    'triton' stays within 1.5x of the reference's own bf16 error, not an absolute 1e-2.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hydrahead_lit.modeling.convert import convert
    from hydrahead_lit.modeling.linear_heads import LAConfig
    from hydrahead_lit.modeling.plan import HeadPlan

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, max_position_embeddings=1024,
    )  # fmt: skip
    teacher = Qwen3ForCausalLM(cfg).cuda().to(torch.bfloat16)
    plan = HeadPlan.from_fa_groups(cfg, {0: [0], 1: [1]})
    ids = torch.randint(0, 256, (2, 300), device="cuda")
    base = convert(teacher, plan, la_config=LAConfig(backend="torch"), calibration_ids=ids[:, :64])
    results = {}
    for name, backend, dtype in (("fp32", "torch", torch.float32), ("torch", "torch", torch.bfloat16),
                                 ("triton", "triton", torch.bfloat16)):  # fmt: skip
        student = copy.deepcopy(base).to(dtype)
        for module in student.modules():
            if hasattr(module, "cfg") and isinstance(module.cfg, LAConfig):
                module.cfg.backend = backend
        student.train()
        loss = student(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.detach().float() for n, p in student.named_parameters() if p.grad is not None}
        results[name] = (loss.detach().float(), grads)
    l_ref, g_ref = results["fp32"]
    flat_ref = torch.cat([g.flatten() for g in g_ref.values()])
    errs = {}
    for name in ("torch", "triton"):
        loss, grads = results[name]
        errs[f"{name} loss"] = _rel(loss, l_ref)
        errs[f"{name} grads"] = _rel(torch.cat([grads[n].flatten() for n in g_ref]), flat_ref)
    ok = errs["triton grads"] <= 1.5 * errs["torch grads"] and errs["triton loss"] <= 1e-2
    print(f"{'ok  ' if ok else 'FAIL'} model step vs float32 (Qwen3 tiny, bf16): "
          + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()), flush=True)  # fmt: skip
    if not ok:
        FAILURES.append("model step")


# --------------------------------------------------------------------------------------------------- timing


def _fla_gdn():
    from fla.ops import gated_delta_rule as fla_gdr
    from fla.ops.common import chunk_o

    chunk_o.TRITON_ABOVE_3_7_1 = True  # bypass fla's Hopper guard: timing only, gradients unreliable
    return fla_gdr.chunk_gated_delta_rule


def _sdpa(q, k, v):  # [B, T, H, D] views
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)


def _time(fn, leaves, out_grad_like=None) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of ``fn()`` whose output is a tensor or a tuple (first used)."""
    with torch.no_grad():
        fwd = do_bench(fn, warmup=25, rep=100, return_mode="median")
    first = fn()
    first = first[0] if isinstance(first, tuple) else first
    grad = torch.randn_like(first)
    del first

    def step():
        o = fn()
        (o[0] if isinstance(o, tuple) else o).backward(grad)

    both = do_bench(step, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")
    return fwd, both


def bench(T: int, Hfa: int, B: int = 1, H: int = 16, D: int = 128) -> dict[str, tuple[float, float]]:
    Hla = H - Hfa
    gen = torch.Generator(device="cuda").manual_seed(1)
    dt = torch.bfloat16
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=gen).to(dt) for _ in range(3))
    q[:, :, Hfa:] = F.normalize(q[:, :, Hfa:].float(), dim=-1).to(dt)
    k[:, :, Hfa:] = F.normalize(k[:, :, Hfa:].float(), dim=-1).to(dt)
    g = F.logsigmoid(torch.randn(B, T, Hla, device="cuda", generator=gen) + 2.0)
    beta = torch.sigmoid(torch.randn(B, T, Hla, device="cuda", generator=gen)).to(dt)
    gain, weight = torch.rand(Hfa, device="cuda") + 0.5, torch.rand(Hla, D, device="cuda") + 0.5
    leaves = [q, k, v, g, beta, gain, weight]
    for x in leaves:
        x.requires_grad_()
    fla_gdn = _fla_gdn()
    res: dict[str, tuple[float, float]] = {}

    def ours(overlap=True):
        return hybrid_attention_triton(
            q[:, :, :Hfa], k[:, :, :Hfa], v[:, :, :Hfa], q[:, :, Hfa:], k[:, :, Hfa:], v[:, :, Hfa:], g, beta,
            gain, weight, overlap=overlap,
        )  # fmt: skip

    fa_idx = torch.arange(Hfa, device="cuda")
    la_idx = torch.arange(Hfa, H, device="cuda")

    def naive():
        qf, kf, vf = (x.index_select(2, fa_idx) for x in (q, k, v))
        ql, kl, vl = (x.index_select(2, la_idx) for x in (q, k, v))
        y_fa = _sdpa(qf, kf, vf).transpose(1, 2) * gain.to(dt)[:, None]
        o, _ = fla_gdn(ql, kl, vl, g=g, beta=beta, scale=D**-0.5, use_qk_l2norm_in_kernel=False)
        o = o.float()
        y_la = (weight * o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-6)).to(dt)
        out = torch.zeros_like(q)
        return out.index_copy(2, fa_idx, y_fa).index_copy(2, la_idx, y_la)

    # Parts alone, each on its own contiguous inputs in its preferred layout.
    qf, kf, vf = (x[:, :, :Hfa].transpose(1, 2).contiguous().detach().requires_grad_() for x in (q, k, v))
    res["SDPA, FA heads"] = _time(lambda: F.scaled_dot_product_attention(qf, kf, vf, is_causal=True), [qf, kf, vf])
    ql, kl, vl = (x[:, :, Hfa:].contiguous().detach().requires_grad_() for x in (q, k, v))
    gl, bl = g.detach().clone().requires_grad_(), beta.detach().clone().requires_grad_()
    la_leaves = [ql, kl, vl, gl, bl]
    res["fla GDN, LA heads"] = _time(
        lambda: fla_gdn(ql, kl, vl, g=gl, beta=bl, scale=D**-0.5, use_qk_l2norm_in_kernel=False), la_leaves
    )
    # The state recurrences' V block width: time both, keep the faster (forward+backward) for all.
    by_bv = {}
    for bv in (16, 32):
        gdn_mod.STATE_BLOCK_V = bv
        by_bv[bv] = _time(lambda: chunk_gated_delta_rule_triton(ql, kl, vl, gl, bl), la_leaves)
    best_bv = min(by_bv, key=lambda b: by_bv[b][1])
    gdn_mod.STATE_BLOCK_V = best_bv
    print(f"  state block V: {by_bv} -> {best_bv}", flush=True)
    res["our GDN, LA heads"] = by_bv[best_bv]
    res["a: this op"] = _time(ours, leaves)
    res["a: this op, one stream"] = _time(lambda: ours(False), leaves)
    res["b: naive (SDPA + fla)"] = _time(naive, leaves)
    res["c: SDPA, 16 heads"] = _time(lambda: _sdpa(q, k, v), [q, k, v])
    best = [min(res["fla GDN, LA heads"][i], res["our GDN, LA heads"][i]) for i in range(2)]
    res["d: ideal (SDPA FA + best LA)"] = tuple(res["SDPA, FA heads"][i] + best[i] for i in range(2))
    return res


def profile(T: int, Hfa: int, H: int = 16, D: int = 128) -> str:
    """Per-kernel CUDA time of this op's forward+backward (where the time goes)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    xs = _hybrid_inputs(1, T, Hfa, Hfa, H - Hfa, D, torch.bfloat16, gen)
    xs = [x.requires_grad_() for x in xs]
    dout = torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        hybrid_attention_triton(*xs).backward(dout)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            hybrid_attention_triton(*xs).backward(dout)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--plans", type=int, nargs="+", default=[2, 4], help="FA heads of 16 (2 = 7:1, 4 = 3:1)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to time (e.g. 1 8)")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    card = torch.cuda.get_device_name()
    env = (
        f"{card}, torch {torch.__version__}, triton {_version('triton')}, fla {_version('fla-core')}; "
        f"command: python {shlex.join(sys.argv)}"
    )
    print(env, flush=True)
    if not args.skip_checks:
        checks = [
            (check_stress_family, ()),
            (check_gdn, (2, 1000, 4, 128)),
            (check_gdn, (1, 8192 + 37, 2, 128)),
            (check_hybrid, (2, 1000, 2, 1, 6, 128)),  # GQA 2
            (check_hybrid, (1, 4096 + 17, 4, 4, 12, 128)),  # GQA 1
            (check_hybrid, (1, 777, 0, 0, 4, 128)),  # all-LA layer
            (check_model_step, ()),
        ]
        for fn, fn_args in checks:
            try:
                fn(*fn_args)
            except Exception:
                traceback.print_exc()
                FAILURES.append(f"{fn.__name__}{fn_args} (error)")
        print("checks:", "all passed" if not FAILURES else f"FAILED {FAILURES}", flush=True)
    lines = []
    if not args.skip_bench:
        rows = []
        for T in args.lengths:
            for B in args.batch:
                for Hfa in args.plans:
                    r = bench(T, Hfa, B)
                    plan = f"{(16 - Hfa) // Hfa}:1"
                    rows.append((T, B, plan, r))
                    print(T, B, plan, {n: f"{a:.3f}/{b:.3f}" for n, (a, b) in r.items()}, flush=True)
                    torch.cuda.empty_cache()
        cols = ["a: this op", "a: this op, one stream", "b: naive (SDPA + fla)", "c: SDPA, 16 heads",
                "SDPA, FA heads", "fla GDN, LA heads", "our GDN, LA heads", "d: ideal (SDPA FA + best LA)"]  # fmt: skip
        lines.append("| T | B | plan | " + " | ".join(cols) + " | a/d | a/c |")
        lines.append("|" + " --- |" * (len(cols) + 5))
        for T, B, plan, r in rows:
            cells = [f"{r[c][0]:.3f} / {r[c][1]:.3f}" for c in cols]
            a, c, d = r["a: this op"], r["c: SDPA, 16 heads"], r["d: ideal (SDPA FA + best LA)"]
            ratios = [f"{a[0] / d[0]:.2f} / {a[1] / d[1]:.2f}", f"{a[0] / c[0]:.2f} / {a[1] / c[1]:.2f}"]
            lines.append(f"| {T // 1024}K | {B} | {plan} | " + " | ".join(cells + ratios) + " |")
        lines.append("")
        lines.append(f"forward / forward+backward, ms (median, do_bench). {env}")
        print("\n".join(lines))
        try:
            table = profile(max(args.lengths), min(args.plans))
            print(f"profile, T={max(args.lengths)}, FA heads {min(args.plans)}, 3 x forward+backward:\n{table}")
        except Exception:
            traceback.print_exc()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("checks: " + ("all passed" if not FAILURES else f"FAILED {FAILURES}") + "\n\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
