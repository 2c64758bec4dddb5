"""Every gated delta rule backend on the stressed input family and on a real model's keys, against
the float64 recurrence (the definition): output, final state and every gradient.

CPU: the PyTorch chunked reference and the project's Triton op (Triton's interpreter), in float32.
Both compute in float32 and differ from the float64 definition by rounding only: observed relative
errors (Frobenius) are 1e-7 to 1.2e-6 on every case, chunk 16 and 64. ``FP32_TOL = 1e-5`` leaves
an order of magnitude for other platforms and summation orders, while the unstable inverse this
family was built to catch gave relative errors of 1e2 to 1e21 (and NaN in bf16 on the GPU).
The GPU version of these checks (fla and Triton in bf16 at real shapes) is ``test_la_stress_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref, recurrent_gated_delta_rule
from tests.ops.gdr_inputs import STRESS_CASES, make_stressed_inputs, norm_rel_err
from tests.ops.real_keys import demo_teacher_layer_inputs, mean_key_coherence

FP32_TOL = 1e-5
NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _triton_fn():
    pytest.importorskip("triton")
    from hydrahead_lit.kernels.gated_delta_rule import chunk_gated_delta_rule_triton

    return chunk_gated_delta_rule_triton


def _outputs_and_grads(fn, inputs: dict, **kwargs) -> dict[str, torch.Tensor]:
    """o, the final state and the gradients of a fixed random linear loss w.r.t. every input."""
    o, state = fn(**inputs, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    dstate = torch.randn(state.shape, generator=gen, dtype=torch.float64)
    loss = (o.double() * do).sum() + (state.double() * dstate).sum()
    names = [n for n in NAMES if inputs.get(n) is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    return {"o": o, "state": state, **{f"d{n}": g for n, g in zip(names, grads)}}


def _leaves(inputs: dict, dtype: torch.dtype) -> dict:
    return {n: None if x is None else x.detach().to(dtype).requires_grad_() for n, x in inputs.items()}


def _check_against_definition(fn, inputs: dict, tol: float, **kwargs) -> None:
    expected = _outputs_and_grads(recurrent_gated_delta_rule, _leaves(inputs, torch.float64))
    got = _outputs_and_grads(fn, _leaves(inputs, torch.float32), **kwargs)
    errors = {name: norm_rel_err(got[name], expected[name]) for name in expected}
    bad = {name: e for name, e in errors.items() if not e <= tol}  # NaN fails too
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("ratio", [1, 2], ids=lambda r: f"gqa{r}")
@pytest.mark.parametrize("chunk", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("case", STRESS_CASES)
def test_torch_chunked_reference_on_stressed_inputs(case: str, chunk: int, ratio: int) -> None:
    inputs = make_stressed_inputs(case, B=2, T=70, Hq=2 * ratio, Hkv=2, with_state=True)
    _check_against_definition(chunk_gated_delta_rule_ref, inputs, FP32_TOL, chunk_size=chunk)


@pytest.mark.parametrize("case", STRESS_CASES)
def test_triton_on_stressed_inputs(case: str) -> None:
    """Batch 2, T = 45 (two full chunks of 16 and a tail), an initial state."""
    inputs = make_stressed_inputs(case, B=2, T=45, with_state=True)
    _check_against_definition(_triton_fn(), inputs, FP32_TOL, chunk_size=16)


@pytest.mark.parametrize("case", ["correlated_0.95", "repeated_tokens", "projection"])
def test_triton_on_stressed_inputs_production_chunk(case: str) -> None:
    """The production chunk of 64 steps, where a power-series inverse fails worst; T = 70 adds a tail."""
    inputs = make_stressed_inputs(case, B=1, T=70, with_state=True)
    _check_against_definition(_triton_fn(), inputs, FP32_TOL, chunk_size=64)


def test_real_model_keys_are_not_isotropic() -> None:
    """The demo teacher's keys share a direction: mean |cos| within a chunk well above random keys'."""
    k = torch.cat([x["k"] for x in demo_teacher_layer_inputs()], dim=2)
    random_k = torch.nn.functional.normalize(torch.randn_like(k), dim=-1)
    assert mean_key_coherence(k) > 1.5 * mean_key_coherence(random_k)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layer", range(4), ids=lambda i: f"layer{i}")
def test_backends_on_real_model_keys(backend: str, layer: int) -> None:
    inputs = dict(demo_teacher_layer_inputs()[layer], initial_state=None)
    fn = chunk_gated_delta_rule_ref if backend == "torch" else _triton_fn()
    _check_against_definition(fn, inputs, FP32_TOL, chunk_size=64)
