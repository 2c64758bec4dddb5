"""LA backend selection (no GPU needed: device capability, Triton version and fla import are faked)
and, on a GPU, fla's kernels against the PyTorch reference."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from hydrahead_lit.ops import la_backend as lb
from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref, recurrent_gated_delta_rule
from tests.ops.gdr_inputs import make_gdr_inputs, rel_err

CUDA = torch.device("cuda")


@pytest.fixture
def env(monkeypatch):
    """A fake CUDA machine: Hopper, Triton 3.6.0, fla importable; a private registry and log cache."""
    # A private copy of the registry: tests may replace entries (a fake "triton").
    monkeypatch.setattr(lb, "_REGISTRY", dict(lb._REGISTRY))
    monkeypatch.setattr(lb, "_LOGGED", set())
    state = {"capability": (9, 0), "triton": "3.6.0", "fla_error": None}
    monkeypatch.setattr(lb, "_device_capability", lambda device: state["capability"])
    monkeypatch.setattr(lb, "_triton_version", lambda: state["triton"])
    monkeypatch.setattr(lb, "_fla_import_error", lambda: state["fla_error"])
    # The project's Triton op (registered by ops/, imported on first use) is left out unless a test
    # registers a fake one in its place.
    monkeypatch.setattr(lb, "_project_triton_import_error", lambda: "left out in this test")
    return state


def _register_fake_triton(available: bool = True) -> list:
    calls = []

    def fn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
        calls.append(scale)
        return recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)

    lb.register_la_backend("triton", fn, lambda device, needs_grad: available)
    return calls


@pytest.mark.parametrize(
    "capability, triton, safe",
    [
        ((9, 0), "3.6.0", False),
        ((9, 0), "3.4.0", False),
        ((9, 0), "3.7.0", False),
        ((9, 0), "3.7.1rc1", False),  # a pre-release is below 3.7.1, as fla's own check reads it
        ((9, 0), "3.7.1", True),
        ((9, 0), "3.9.0", True),
        ((9, 0), "3.3.1", True),
        ((8, 0), "3.6.0", True),  # A100: the miscompilation is Hopper-only
        ((10, 0), "3.6.0", True),
        ((9, 0), None, True),  # no Triton: fla cannot run anyway; another check reports that
    ],
)
def test_fla_gated_backward_is_safe(env, capability, triton, safe) -> None:
    env.update(capability=capability, triton=triton)
    assert lb.fla_gated_backward_is_safe(CUDA) is safe
    assert lb.fla_gated_backward_is_safe(torch.device("cpu")) is True


def test_auto_on_hopper_triton36(env, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hydrahead_lit")
    assert lb.select_la_backend(CUDA, needs_grad=False) == "fla"  # forward is fine
    assert lb.select_la_backend(CUDA, needs_grad=True) == "torch"  # no Triton op registered
    assert "fla gated backward refused on Hopper (sm_90) with Triton 3.6.0" in caplog.text
    _register_fake_triton()
    lb._LOGGED.clear()
    assert lb.select_la_backend(CUDA, needs_grad=True) == "triton"


def test_auto_prefers_fla_when_safe(env) -> None:
    _register_fake_triton()
    env.update(triton="3.8.0")
    assert lb.select_la_backend(CUDA, needs_grad=True) == "fla"
    env.update(triton="3.6.0", capability=(8, 0))
    assert lb.select_la_backend(CUDA, needs_grad=True) == "fla"


def test_auto_without_fla(env, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hydrahead_lit")
    env.update(fla_error="fla does not import (ModuleNotFoundError: No module named 'fla')")
    assert lb.select_la_backend(CUDA, needs_grad=False) == "torch"
    assert "does not import" in caplog.text
    _register_fake_triton(available=False)
    assert lb.select_la_backend(CUDA, needs_grad=True) == "torch"
    _register_fake_triton(available=True)
    assert lb.select_la_backend(CUDA, needs_grad=True) == "triton"


def test_auto_on_cpu_is_torch(env) -> None:
    _register_fake_triton()
    assert lb.select_la_backend(torch.device("cpu"), needs_grad=True) == "torch"
    assert lb.select_la_backend(torch.device("cpu"), needs_grad=False) == "torch"


def test_logs_once_per_device_type_and_mode(env, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hydrahead_lit")
    for _ in range(3):
        lb.select_la_backend(CUDA, needs_grad=True)
        lb.select_la_backend(torch.device("cuda", 0), needs_grad=True)
    lb.select_la_backend(CUDA, needs_grad=False)
    assert len([r for r in caplog.records if r.name == "hydrahead_lit"]) == 2


def test_explicit_backend_errors(env) -> None:
    with pytest.raises(RuntimeError, match="'triton' cannot run here: left out in this test"):
        lb.select_la_backend(CUDA, needs_grad=False, preferred="triton")
    with pytest.raises(RuntimeError, match="the project's Triton op needs a CUDA device"):
        lb.select_la_backend(torch.device("cpu"), needs_grad=False, preferred="triton")
    with pytest.raises(ValueError, match="unknown LA backend 'cuda_magic'"):
        lb.select_la_backend(CUDA, needs_grad=False, preferred="cuda_magic")
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        lb.select_la_backend(torch.device("cpu"), needs_grad=False, preferred="fla")
    with pytest.raises(RuntimeError, match="refused on Hopper"):
        lb.select_la_backend(CUDA, needs_grad=True, preferred="fla")
    assert lb.select_la_backend(CUDA, needs_grad=False, preferred="fla") == "fla"
    _register_fake_triton(available=False)
    with pytest.raises(RuntimeError, match="'triton' cannot run here"):
        lb.select_la_backend(CUDA, needs_grad=False, preferred="triton")
    with pytest.raises(ValueError, match="reserved"):
        lb.register_la_backend("auto", lambda *a, **k: None, lambda d, n: True)


def test_dispatch_on_cpu(env) -> None:
    x = make_gdr_inputs(T=40, Hq=4, Hkv=2)
    o, s = lb.gated_delta_rule(**x, output_final_state=True)
    o_ref, s_ref = chunk_gated_delta_rule_ref(**x, output_final_state=True)
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5  # fp32, as in the ref tests
    short = {n: (t[:, :3] if n != "initial_state" else t) for n, t in x.items()}  # recurrent path
    o, s = lb.gated_delta_rule(**short, output_final_state=True)
    o_ref, s_ref = chunk_gated_delta_rule_ref(**short, output_final_state=True)
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    calls = _register_fake_triton()
    lb.gated_delta_rule(**x, scale=0.25, backend="triton")
    assert calls == [0.25]


def test_import_does_not_load_fla_or_triton() -> None:
    code = (
        "import sys, hydrahead_lit.ops.la_backend, hydrahead_lit.ops.short_conv;"
        "bad = [m for m in ('fla', 'triton') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T", [1, 50, 300], ids=lambda t: f"T{t}")
def test_fla_matches_reference_bf16(T: int) -> None:
    """fla (chunk, or fused recurrent for short inference) against the fp32 reference on the same
    bf16 inputs, GQA ratio 2 (exercises the head expansion). bf16 tensor-core matmuls inside the
    kernels give relative errors of a few 1e-3; 2e-2 catches any wrong convention (O(1))."""
    pytest.importorskip("fla")
    tol = 2e-2
    x = make_gdr_inputs(T=T, Hq=4, Hkv=2, K=64, V=64, dtype=torch.bfloat16, device="cuda")
    ref = {n: (t.float() if t is not None else None) for n, t in x.items()}
    with torch.no_grad():
        o, s = lb.gated_delta_rule(**x, output_final_state=True, backend="fla")
        o_ref, s_ref = chunk_gated_delta_rule_ref(**ref, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.shape == s_ref.shape
    assert rel_err(o, o_ref) <= tol and rel_err(s, s_ref) <= tol

    if not lb.fla_gated_backward_is_safe(CUDA):
        with pytest.raises(RuntimeError, match="Hopper"):
            lb.select_la_backend(CUDA, needs_grad=True, preferred="fla")
        assert lb.select_la_backend(CUDA, needs_grad=True) != "fla"
        return
    for t in list(x.values()) + list(ref.values()):
        if t is not None:
            t.requires_grad_(True)
    names = [n for n in x if x[n] is not None]
    o, s = lb.gated_delta_rule(**x, output_final_state=True, backend="fla")
    o_ref, s_ref = chunk_gated_delta_rule_ref(**ref, output_final_state=True)
    do, ds = torch.randn_like(o_ref), torch.randn_like(s_ref)
    grads = torch.autograd.grad((o.float() * do).sum() + (s * ds).sum(), [x[n] for n in names])
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), [ref[n] for n in names])
    for name, a, b in zip(names, grads, grads_ref):
        assert rel_err(a, b) <= tol, name
