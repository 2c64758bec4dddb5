"""The chunked gated delta rule reference against the recurrence (its definition), and against fla."""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref, recurrent_gated_delta_rule
from tests.ops.gdr_inputs import make_gdr_inputs, rel_err

# fp32: both forms compute in float32 and differ only by summation order over <= 130 steps
# (observed ~3e-7); 1e-5 leaves room for platforms while catching any wrong term (errors of
# a missed decay or mask are O(1e-2) or larger).
FP32_TOL = 1e-5
# bf16 inputs: both forms upcast the same bf16 values, so outputs and gradients differ by at most
# about one bf16 rounding (2**-8 = 3.9e-3 relative) after the final cast.
BF16_TOL = 1e-2

NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _run_with_grads(fn, inputs, seed: int = 1, **kwargs):
    """Output, final state and the gradients of a fixed random linear loss w.r.t. every input."""
    o, state = fn(**inputs, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(o)
    dstate = torch.randn(state.shape, generator=gen)
    loss = (o.float() * do.float()).sum() + (state * dstate).sum()
    leaves = [inputs[n] for n in NAMES if inputs[n] is not None]
    grads = torch.autograd.grad(loss, leaves)
    return o, state, dict(zip([n for n in NAMES if inputs[n] is not None], grads))


@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("ratio", [1, 2, 4], ids=lambda r: f"gqa{r}")
@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("T", [1, 37, 64, 130], ids=lambda t: f"T{t}")
def test_chunk_matches_recurrent_fp32(T: int, chunk_size: int, ratio: int, with_state: bool) -> None:
    inputs = make_gdr_inputs(B=2, T=T, Hq=2 * ratio, Hkv=2, with_state=with_state, requires_grad=True)
    o_ref, s_ref, g_ref = _run_with_grads(recurrent_gated_delta_rule, inputs)
    o, s, grads = _run_with_grads(chunk_gated_delta_rule_ref, inputs, chunk_size=chunk_size)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert o.shape == (2, T, 2 * ratio, 16) and s.shape == (2, 2, 8, 16)
    assert rel_err(o, o_ref) <= FP32_TOL
    assert rel_err(s, s_ref) <= FP32_TOL
    for name, grad in grads.items():
        assert rel_err(grad, g_ref[name]) <= FP32_TOL, name


@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("T", [37, 130], ids=lambda t: f"T{t}")
def test_chunk_matches_recurrent_bf16(T: int, chunk_size: int) -> None:
    inputs = make_gdr_inputs(T=T, Hq=4, Hkv=2, dtype=torch.bfloat16, requires_grad=True)
    o_ref, s_ref, g_ref = _run_with_grads(recurrent_gated_delta_rule, inputs)
    o, s, grads = _run_with_grads(chunk_gated_delta_rule_ref, inputs, chunk_size=chunk_size)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_err(o, o_ref) <= BF16_TOL
    assert rel_err(s, s_ref) <= BF16_TOL
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype
        assert rel_err(grad, g_ref[name]) <= BF16_TOL, name


@pytest.mark.parametrize("fn", [recurrent_gated_delta_rule, chunk_gated_delta_rule_ref], ids=["rec", "chunk"])
def test_definition_by_hand(fn) -> None:
    """Two steps computed by hand for one head (catches a convention flip both forms could share)."""
    K, V = 2, 3
    x = make_gdr_inputs(B=1, T=2, Hq=1, Hkv=1, K=K, V=V)
    q, k, v, g, beta, s = (x[n][0, :, 0] if n != "initial_state" else x[n][0, 0] for n in NAMES)
    outs = []
    for t in range(2):
        a = g[t].exp()
        s = a * s + beta[t] * torch.outer(k[t], v[t] - a * s.T @ k[t])
        outs.append(0.5 * s.T @ q[t])
    o, final = fn(**x, scale=0.5, output_final_state=True)
    assert rel_err(o[0, :, 0], torch.stack(outs)) <= FP32_TOL
    assert rel_err(final[0, 0], s) <= FP32_TOL


def test_default_scale_is_inverse_sqrt_k() -> None:
    x = make_gdr_inputs(T=5, K=16)
    o_default, _ = recurrent_gated_delta_rule(**x)
    o_explicit, _ = recurrent_gated_delta_rule(**x, scale=16**-0.5)
    torch.testing.assert_close(o_default, o_explicit, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [recurrent_gated_delta_rule, chunk_gated_delta_rule_ref], ids=["rec", "chunk"])
def test_split_sequence_carries_state(fn) -> None:
    """Prefill then continue (in one piece, then token by token) equals a single call."""
    x = make_gdr_inputs(T=50, Hq=4, Hkv=2)
    o_full, s_full = fn(**x, output_final_state=True)

    def part(lo: int, hi: int, state):
        return {**{n: x[n][:, lo:hi] for n in NAMES[:5]}, "initial_state": state}

    o1, s1 = fn(**part(0, 37, x["initial_state"]), output_final_state=True)
    o2, s2 = fn(**part(37, 50, s1), output_final_state=True)
    assert rel_err(torch.cat([o1, o2], dim=1), o_full) <= FP32_TOL
    assert rel_err(s2, s_full) <= FP32_TOL

    state, steps = s1, []
    for t in range(37, 50):  # decoding: one token a call
        o_t, state = recurrent_gated_delta_rule(**part(t, t + 1, state), output_final_state=True)
        steps.append(o_t)
    assert rel_err(torch.cat([o1, *steps], dim=1), o_full) <= FP32_TOL
    assert rel_err(state, s_full) <= FP32_TOL


def test_no_final_state_unless_asked() -> None:
    x = make_gdr_inputs(T=20)
    assert recurrent_gated_delta_rule(**x)[1] is None
    assert chunk_gated_delta_rule_ref(**x)[1] is None


@pytest.mark.parametrize(
    "change, match",
    [
        ({"k": torch.zeros(2, 9, 2, 4)}, "k must be"),
        ({"v": torch.zeros(2, 9, 2, 16, 1)}, "q, k, v must be"),
        ({"g": torch.zeros(2, 9, 3)}, "g must be"),
        ({"beta": torch.zeros(2, 9)}, "beta must be"),
        ({"q": torch.zeros(2, 9, 3, 8)}, "multiple of KV heads"),
        ({"initial_state": torch.zeros(2, 2, 16, 8)}, "initial_state must be"),
    ],
)
def test_bad_shapes_raise(change, match) -> None:
    x = {**make_gdr_inputs(T=9), **change}
    for fn in (recurrent_gated_delta_rule, chunk_gated_delta_rule_ref):
        with pytest.raises(ValueError, match=match):
            fn(**x)


# ------------------------------------------------------------------------------------------------
# Convention check against fla's own PyTorch references (ratio 1 only: they have no grouped queries).


@pytest.fixture(scope="module")
def fla_naive():
    try:
        from fla.ops.gated_delta_rule import naive
    except Exception as err:  # fla or its Triton import missing
        pytest.skip(f"fla is not importable: {err}")
    return naive


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("T", [1, 37, 130], ids=lambda t: f"T{t}")
def test_matches_fla_naive(fla_naive, T: int, with_state: bool) -> None:
    x = make_gdr_inputs(T=T, with_state=with_state)
    o, s = recurrent_gated_delta_rule(**x, scale=0.3, output_final_state=True)
    fla_kwargs = {**x, "scale": 0.3, "output_final_state": True}
    o_fla, s_fla = fla_naive.naive_recurrent_gated_delta_rule(**fla_kwargs)
    assert rel_err(o, o_fla) <= FP32_TOL and rel_err(s, s_fla) <= FP32_TOL
    o_fla, s_fla = fla_naive.naive_chunk_gated_delta_rule(**fla_kwargs, chunk_size=16)
    assert rel_err(o, o_fla) <= FP32_TOL and rel_err(s, s_fla) <= FP32_TOL
