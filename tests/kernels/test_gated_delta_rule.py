"""The Triton gated delta rule against the PyTorch reference: forward, final state, all gradients."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from hydrahead_lit.kernels.gated_delta_rule import chunk_gated_delta_rule_triton  # noqa: E402
from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref  # noqa: E402

# Both sides compute in float32 and differ only in summation order (both invert the chunk's unit
# triangular matrix by substitution): observed relative errors are ~1e-7 on CPU, so 1e-4 is loose
# enough for any order yet far below what a wrong term (relative error ~1) would give. The stressed
# inputs (correlated and identical keys, extreme gates) are in tests/ops/test_la_stress.py.
RTOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _inputs(B: int, T: int, H: int, K: int, V: int, with_h0: bool):
    q = F.normalize(torch.randn(B, T, H, K), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H) + 2.0)  # decays mostly near 1, as after training
    beta = torch.rand(B, T, H)
    h0 = torch.randn(B, H, K, V) if with_h0 else None
    return [x.requires_grad_() if x is not None else None for x in (q, k, v, g, beta, h0)]


@pytest.mark.parametrize(
    ("B", "T", "H", "K", "V", "chunk", "with_h0"),
    [
        (2, 37, 2, 16, 64, 16, True),  # T not a multiple of the chunk, several chunks and V blocks, h0
        (1, 32, 1, 32, 16, 16, False),  # T a multiple of the chunk, K > V
        (1, 20, 2, 16, 16, 64, True),  # a single partial chunk at the production chunk size
        (2, 150, 2, 16, 32, 64, True),  # blocked inverse: two full chunks, a tail ending in sub-chunk 1
    ],
    ids=["tail-h0", "exact", "one-partial-chunk", "blocked-tail"],
)
def test_triton_gated_delta_rule_matches_reference(B, T, H, K, V, chunk, with_h0):
    q, k, v, g, beta, h0 = _inputs(B, T, H, K, V, with_h0)
    o, ht = chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=chunk)
    o_ref, ht_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert _rel(o, o_ref) < RTOL
    assert _rel(ht, ht_ref) < RTOL

    do, dht = torch.randn_like(o), torch.randn_like(ht)
    leaves = [x for x in (q, k, v, g, beta, h0) if x is not None]
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (ht_ref * dht).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], grads, grads_ref):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < RTOL, name


def test_triton_gated_delta_rule_without_final_state_grad():
    """Only ``o`` used: the state gradient enters as None and the default scale applies."""
    q, k, v, g, beta, _ = _inputs(1, 24, 1, 16, 16, False)
    o, ht = chunk_gated_delta_rule_triton(q, k, v, g, beta, chunk_size=16)
    assert ht is None
    o_ref, _ = chunk_gated_delta_rule_ref(q, k, v, g, beta)
    assert _rel(o, o_ref) < RTOL
    gq, gg = torch.autograd.grad(o.square().sum(), (q, g))
    gq_ref, gg_ref = torch.autograd.grad(o_ref.square().sum(), (q, g))
    assert _rel(gq, gq_ref) < RTOL and _rel(gg, gg_ref) < RTOL


def test_triton_gated_delta_rule_rejects_what_it_cannot_take():
    q, k, v, g, beta, _ = _inputs(1, 8, 2, 16, 16, False)
    with pytest.raises(ValueError, match="one KV head per query head"):
        chunk_gated_delta_rule_triton(q, k[:, :, :1], v[:, :, :1], g[:, :, :1], beta[:, :, :1])
    with pytest.raises(ValueError, match="power of two"):
        chunk_gated_delta_rule_triton(q[..., :12], k[..., :12], v, g, beta)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_delta_rule_triton(q, k, v, g, beta, chunk_size=24)


def test_triton_la_backend_registered_by_ops_and_expands_gqa():
    """ops/ registers "triton" (CUDA only) without importing the kernels; with 2 query heads per KV
    head the backend matches the reference, gradients summed over the copies of each KV head."""
    from hydrahead_lit.ops import la_backend

    assert "triton" in la_backend._REGISTRY
    assert la_backend._REGISTRY["triton"].unavailable_reason(torch.device("cpu"), True) is not None
    _la_backend_fn = la_backend._REGISTRY["triton"].fn

    B, T, Hkv, K, V = 1, 40, 2, 16, 16
    q = F.normalize(torch.randn(B, T, 2 * Hkv, K), dim=-1).requires_grad_()
    k, v, g, beta, h0 = _inputs(B, T, Hkv, K, V, True)[1:]
    leaves = [q, k, v, g, beta, h0]
    o, ht = _la_backend_fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert _rel(o, o_ref) < RTOL and _rel(ht, ht_ref) < RTOL
    grads = torch.autograd.grad(o.square().sum() + ht.sum(), leaves)
    grads_ref = torch.autograd.grad(o_ref.square().sum() + ht_ref.sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], grads, grads_ref):
        assert _rel(a, b) < RTOL, name


@pytest.mark.parametrize(
    ("chunk", "lengths"),
    [(16, [20, 37, 0, 9]), (64, [20, 150, 0, 45, 127, 1])],  # chunk tails, multi-chunk documents, an empty one
    ids=["C16", "C64-blocked"],
)
def test_triton_gated_delta_rule_packed_sequences(chunk, lengths):
    """cu_seqlens: each packed document runs from its own initial state, as if run alone; at chunk 64 the
    blocked inverse sees documents ending in each of a chunk's four 16-step sub-chunks, and one of one step."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    T, H, K, V = sum(lengths), 2, 16, 32
    q, k, v, g, beta, _ = _inputs(1, T, H, K, V, False)
    h0 = torch.randn(len(lengths), H, K, V, requires_grad=True)
    o, ht = chunk_gated_delta_rule_triton(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=chunk, cu_seqlens=cu
    )
    outs, states = [], []
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if b == a:  # an empty document keeps its initial state
            outs.append(torch.zeros(1, 0, H, V))
            states.append(h0[n : n + 1])
            continue
        o_n, ht_n = chunk_gated_delta_rule_ref(
            *(x[:, a:b] for x in (q, k, v, g, beta)), initial_state=h0[n : n + 1], output_final_state=True
        )
        outs.append(o_n)
        states.append(ht_n)
    o_ref, ht_ref = torch.cat(outs, dim=1), torch.cat(states, dim=0)
    assert _rel(o, o_ref) < RTOL and _rel(ht, ht_ref) < RTOL

    do, dht = torch.randn_like(o), torch.randn_like(ht)
    leaves = [q, k, v, g, beta, h0]
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (ht_ref * dht).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], grads, grads_ref):
        assert _rel(a, b) < RTOL, name

    with pytest.raises(ValueError, match="B must be 1"):
        chunk_gated_delta_rule_triton(*(x.expand(2, *x.shape[1:]) for x in (q, k, v, g, beta)), cu_seqlens=cu)
    with pytest.raises(ValueError, match="rise from 0"):
        chunk_gated_delta_rule_triton(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 30, 20, T]))
