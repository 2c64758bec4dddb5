"""The fused hybrid attention op against its PyTorch definition: output and every input gradient."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton  # noqa: E402
from hydrahead_lit.ops.hybrid_attention import hybrid_attention, hybrid_attention_ref  # noqa: E402

# float32 on both sides; the LA part differs only in summation order (see test_gated_delta_rule)
# and the FA part is the same SDPA call, so anything above 1e-4 is a real error.
RTOL = 1e-4
NAMES = ["q_fa", "k_fa", "v_fa", "q_la", "k_la", "v_la", "g", "beta", "fa_gain", "la_weight"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _inputs(B: int, T: int, Hfa: int, Hkv: int, Hla: int, D: int) -> list[torch.Tensor]:
    xs = [
        torch.randn(B, T, Hfa, D),
        torch.randn(B, T, Hkv, D),
        torch.randn(B, T, Hkv, D),
        F.normalize(torch.randn(B, T, Hla, D), dim=-1),
        F.normalize(torch.randn(B, T, Hla, D), dim=-1),
        torch.randn(B, T, Hla, D),
        F.logsigmoid(torch.randn(B, T, Hla) + 2.0),
        torch.rand(B, T, Hla),
        torch.rand(Hfa) + 0.5,
        torch.rand(Hla, D) + 0.5,
    ]
    return [x.requires_grad_() for x in xs]


@pytest.mark.parametrize(
    ("B", "T", "Hfa", "Hkv", "Hla"),
    [(2, 80, 2, 1, 2), (1, 70, 2, 2, 3), (1, 40, 0, 0, 2), (1, 40, 2, 1, 0)],
    ids=["gqa2-two-chunks", "gqa1", "all-la", "all-fa"],
)
def test_triton_hybrid_attention_matches_reference(B, T, Hfa, Hkv, Hla):
    D = 16
    xs = _inputs(B, T, Hfa, Hkv, Hla, D)
    out = hybrid_attention_triton(*xs)
    ref = hybrid_attention_ref(*xs)
    assert out.shape == (B, T, Hfa + Hla, D)
    assert _rel(out, ref) < RTOL

    dout = torch.randn_like(out)
    leaves = [x for x in xs if x.numel()]
    grads = torch.autograd.grad(out, leaves, dout)
    grads_ref = torch.autograd.grad(ref, leaves, dout)
    names = [n for n, x in zip(NAMES, xs) if x.numel()]
    for name, a, b in zip(names, grads, grads_ref):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < RTOL, name


def test_triton_hybrid_attention_reads_strided_views():
    """The model passes head slices of its projections: no copies, same result."""
    B, T, H, Hfa, D = 1, 48, 4, 1, 16
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    q_la, k_la = F.normalize(q[:, :, Hfa:], dim=-1), F.normalize(k[:, :, Hfa:], dim=-1)
    g, beta = F.logsigmoid(torch.randn(B, T, H - Hfa)), torch.rand(B, T, H - Hfa)
    gain, weight = torch.rand(Hfa), torch.rand(H - Hfa, D)
    args = (q[:, :, :Hfa], k[:, :, :Hfa], v[:, :, :Hfa], q_la, k_la, v[:, :, Hfa:], g, beta, gain, weight)
    assert not args[5].is_contiguous()
    contiguous = [x.contiguous() for x in args]
    assert _rel(hybrid_attention_triton(*args), hybrid_attention_ref(*contiguous)) < RTOL


def test_hybrid_attention_dispatch_and_errors():
    xs = [x.detach() for x in _inputs(1, 8, 2, 1, 2, 16)]
    # On CPU "auto" is the reference.
    torch.testing.assert_close(hybrid_attention(*xs), hybrid_attention_ref(*xs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown hybrid attention backend"):
        hybrid_attention(*xs, backend="cuda")
    bad = list(xs)
    bad[1] = bad[2] = torch.randn(1, 8, 3, 16)  # 2 FA query heads over 3 KV heads
    with pytest.raises(ValueError, match="multiple of FA KV heads"):
        hybrid_attention_ref(*bad)
    bad = list(xs)
    bad[9] = torch.randn(2, 8)
    with pytest.raises(ValueError, match="la_weight"):
        hybrid_attention_ref(*bad)


@pytest.mark.parametrize(("Hfa", "Hla"), [(2, 2), (0, 2)], ids=["hybrid", "all-la"])
def test_checkpointed_op_runs_its_forward_twice_and_matches(monkeypatch, Hfa, Hla):
    """Under non-reentrant activation checkpointing the op's LA forward runs twice per step (the forward and
    the recompute), not three times: the op keeps nothing outside `save_for_backward` (an SDPA graph held
    on ctx once made the backward recompute the block again). Gradients equal the uncheckpointed op's."""
    from torch.utils.checkpoint import checkpoint

    import hydrahead_lit.kernels.hybrid_attention as op_module

    calls = []
    forward = op_module.gdn_forward
    monkeypatch.setattr(op_module, "gdn_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    xs = _inputs(1, 40, Hfa, Hfa // 2, Hla, 16)
    x = torch.randn(1, 40, Hfa + Hla, 16, requires_grad=True)

    def block(x):  # something before the op, so the recompute has a graph to rebuild
        return (hybrid_attention_triton(xs[0] * x[:, :, :Hfa], *xs[1:]) * x).sum()

    leaves = [x] + [t for t in xs if t.numel()]
    plain = torch.autograd.grad(block(x), leaves)
    calls.clear()
    checkpointed = torch.autograd.grad(checkpoint(block, x, use_reentrant=False), leaves)
    assert len(calls) == 2
    for a, b in zip(checkpointed, plain, strict=True):
        assert _rel(a, b) < 1e-6


def test_backward_reruns_sdpa_under_the_forward_autocast():
    """Under bf16 autocast (stages 2 and 3 train with bf16-mixed) the FA queries and keys reach the op in
    float32 (the q/k norm's float32 weight and RoPE's cos/sin promote them) and the values in bf16; the
    backward, which a trainer calls outside autocast, reruns SDPA under the forward's autocast state. The FA
    gradients then equal those of the reference under the same autocast (the same bf16 SDPA: measured
    equal, 1e-6 allowed). The LA inputs are float32 (the interpreter's bf16 arithmetic is not a GPU's);
    their gradients differ by the reference's own bf16 rounding (CPU autocast runs its matmuls in bf16:
    up to 8e-3 measured, 2e-2 allowed)."""
    torch.manual_seed(0)
    xs = _inputs(1, 40, 2, 1, 2, 16)
    xs[2] = xs[2].detach().to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hybrid_attention_triton(*xs)
        ref = hybrid_attention_ref(*xs)
    dout = torch.randn(out.shape)
    grads = torch.autograd.grad(out, xs, dout.to(out.dtype))
    grads_ref = torch.autograd.grad(ref, xs, dout.to(ref.dtype))
    for name, a, b in zip(NAMES, grads, grads_ref, strict=True):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < (1e-6 if name in ("q_fa", "k_fa", "v_fa", "fa_gain") else 2e-2), name


def test_backward_without_fa_gradients_skips_sdpa_and_keeps_the_la_ones(monkeypatch):
    """With no gradient wanted for the FA inputs and gain (frozen FA heads), the backward skips its SDPA rerun
    (one SDPA call in all, the forward's) and the LA gradients equal the reference's (float32, RTOL)."""
    import hydrahead_lit.kernels.hybrid_attention as op_module

    calls = []
    sdpa = op_module._sdpa
    monkeypatch.setattr(op_module, "_sdpa", lambda *a: calls.append(1) or sdpa(*a))
    xs = _inputs(1, 40, 2, 1, 2, 16)
    for x in (*xs[:3], xs[8]):
        x.requires_grad_(False)
    la = [xs[i] for i in (3, 4, 5, 6, 7, 9)]
    dout = torch.randn(1, 40, 4, 16)
    grads = torch.autograd.grad(hybrid_attention_triton(*xs), la, dout)
    assert len(calls) == 1
    grads_ref = torch.autograd.grad(hybrid_attention_ref(*xs), la, dout)
    for a, b in zip(grads, grads_ref, strict=True):
        assert _rel(a, b) < RTOL
