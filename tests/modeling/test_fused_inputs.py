"""The layer's fused input preparation (one projection GEMM, q and k rows normed, rotated and L2-normed
together) computes what the separate projections and per-tensor norms computed.

The reference below is the layer's arithmetic written out with one `nn.Linear` call per projection and
q and k prepared one at a time (the teacher's RMSNorm, RoPE, then `F.normalize`); it replaces
`HybridAttention.forward` in a second run of the same model. float64 on CPU: outputs, every parameter's
gradient, the LA states and the stage-1 twins' outputs agree within 1e-10 relative to the reference's
largest magnitude (the two differ only in the order of floating-point operations).

The LA heads' q/k norm and L2 statistics and decay/beta used to be cast to float32 even in a float64 model;
they now stay in float64 there (float32 for bf16 and float32 models, as before), so the reference computes them
in float64 too. The FA heads' norms keep the teacher's float32 statistics in both.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.attention import HybridAttention, _attention_function
from hydrahead_lit.modeling.fused_inputs import PROJECTION_ALIGN, concat_linear, la_qk_rows, project_split
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.ops.la_backend import gated_delta_rule
from hydrahead_lit.ops.short_conv import causal_short_conv
from tests.modeling.tiny import ARCHS, random_ids, tiny_teacher

REL_TOL = 1e-10  # float64: the fused and separate forms round differently, nothing more
LA_OPTIONS = [(0, False), (4, False), (0, True), (4, True)]  # (short_conv, output_gate)
LA_IDS = ["plain", "conv", "gate", "conv_gate"]


@pytest.fixture(autouse=True)
def _one_thread():
    """float64 depthwise conv1d runs one tiny convolution per channel on the CPU, each a parallel region;
    on a busy machine their barriers take seconds. One thread keeps these tests to milliseconds per conv."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# The reference: separate projections, q and k one at a time.


def _ref_norm(x: Tensor, weight: Tensor, eps: float, acc: torch.dtype = torch.float32) -> Tensor:
    """The teacher's RMSNorm; `acc` is its statistics' dtype (float32 as in the teacher)."""
    dtype = x.dtype
    x = x.to(acc)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _ref_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _ref_la(la: Any, x: Tensor, cos: Tensor, sin: Tensor, state: dict | None, valid: Tensor | None) -> Tensor:
    B, T, _ = x.shape
    H, D = la.num_heads, la.head_dim
    qkv = torch.cat([la.q_proj(x), la.k_proj(x), la.v_proj(x)], dim=-1)
    if la.conv is not None:
        prev = None if state is None else state.get("conv")
        qkv, conv_state = causal_short_conv(qkv, la.conv.to(qkv.dtype), prev, state is not None, valid=valid)
        if state is not None:
            state["conv"] = conv_state
    q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
    acc = torch.promote_types(x.dtype, torch.float32)  # float64 here (float32 for bf16 and float32 models)
    if la.q_norm is not None:
        q, k = _ref_norm(q, la.q_norm.weight, la.q_norm.eps, acc), _ref_norm(k, la.k_norm.weight, la.k_norm.eps, acc)
    if la.cfg.use_rope and cos is not None:
        q, k = _ref_rope(q, cos, sin), _ref_rope(k, cos, sin)
    q = F.normalize(q.to(acc), dim=-1).to(v.dtype)
    k = F.normalize(k.to(acc), dim=-1).to(v.dtype)
    g = -la.A_log.to(acc).exp() * F.softplus(la.a_proj(x).to(acc) + la.dt_bias.to(acc))
    beta = torch.sigmoid(la.b_proj(x).to(acc))
    if valid is not None:
        pad = ~valid.to(torch.bool)
        g, beta = g.masked_fill(pad[:, :, None], 0.0), beta.masked_fill(pad[:, :, None], 0.0)
        k, v = k.masked_fill(pad[:, :, None, None], 0.0), v.masked_fill(pad[:, :, None, None], 0.0)
    initial = None if state is None else state.get("recurrent")
    o, final = gated_delta_rule(
        q, k, v, g, beta, initial_state=initial, output_final_state=state is not None, backend=la.cfg.backend
    )
    if state is not None:
        state["recurrent"] = final
    if la.g_proj is not None:
        o = o * torch.sigmoid(la.g_proj(x)).view(B, T, H, D).to(o.dtype)
    return o


def _ref_fa(attn: HybridAttention, x: Tensor, cos, sin, mask, cache_layer, probe, **kwargs) -> Tensor:
    B, T, _ = x.shape
    D = attn.head_dim
    q = attn.q_proj(x).view(B, T, -1, D)
    k = attn.k_proj(x).view(B, T, -1, D)
    v = attn.v_proj(x).view(B, T, -1, D)
    if attn.q_norm is not None:
        q, k = _ref_norm(q, attn.q_norm.weight, attn.q_norm.eps), _ref_norm(k, attn.k_norm.weight, attn.k_norm.eps)
    q, k, v = _ref_rope(q, cos, sin).transpose(1, 2), _ref_rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
    if cache_layer is not None:
        k, v = cache_layer.update(k, v)
    if probe is not None and probe.rows is not None:
        probe.record_attention(attn.layer_idx, attn._attention_rows(q, k, probe.rows))
    kwargs.pop("output_attentions", None)
    out, _ = _attention_function(attn.config)(
        attn,
        q,
        k,
        v,
        mask,
        dropout=0.0 if not attn.training else attn.attention_dropout,
        scaling=attn.scaling,
        sliding_window=attn.sliding_window,
        **kwargs,
    )
    return out


def _ref_forward(
    self: HybridAttention,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    attention_mask: Tensor | None = None,
    past_key_values: Any = None,
    cache: Any = None,
    token_valid: Tensor | None = None,
    attention_probe: AttentionProbe | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """`HybridAttention.forward`'s composed path (and twin mode) with separate projections."""
    cache = cache if cache is not None else past_key_values
    for key in ("position_ids", "use_cache", "cache_position"):
        kwargs.pop(key, None)
    B, T, _ = hidden_states.shape
    cos, sin = position_embeddings
    cache_layer = cache.layers[self.layer_idx] if cache is not None else None
    x, probe = hidden_states, attention_probe
    if self.twins:
        fa = _ref_fa(self, x, cos, sin, attention_mask, None, probe, **kwargs)
        if probe is not None and probe.needs_twins(self.layer_idx):
            la = self.fusion.la(_ref_la(self.la, x.detach(), cos, sin, None, token_valid))
            if probe.alignment:
                probe.record_alignment(self.layer_idx, fa.detach(), la)
        return self.o_proj(fa.reshape(B, T, -1)), None
    parts = []
    if self.num_fa_heads:
        parts.append(self.fusion.fa(_ref_fa(self, x, cos, sin, attention_mask, cache_layer, probe, **kwargs)))
    elif cache_layer is not None:
        cache_layer.advance(T)
    if self.num_la_heads:
        state = cache_layer.la_state if cache_layer is not None else None
        parts.append(self.fusion.la(_ref_la(self.la, x, cos, sin, state, token_valid)))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return self.o_proj(out.reshape(B, T, -1)), None


# ---------------------------------------------------------------------------------------------------
# Models and comparisons.


def _student(arch: str, conv: int, gate: bool, twins: bool = False):
    """float64, 3 layers (mixed FA/LA, all LA, all FA), 4 query heads on 2 KV heads (GQA 2), every new
    parameter random (a zero decay or beta projection would hide a swapped piece of the projection)."""
    teacher = tiny_teacher(arch, layers=3)
    plan = None if twins else hh.HeadPlan.from_fa_groups(teacher.config, {0: [1], 1: [], 2: [0, 1]})
    la_cfg = hh.LAConfig(short_conv=conv, output_gate=gate, backend="torch")
    student = hh.convert(teacher, plan, la_config=la_cfg, twins=twins).to(torch.float64)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in decoder_layers(student):
            for p in layer.self_attn.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return student


def _padded_batch(T: int = 21) -> tuple[Tensor, Tensor]:
    """B = 3: a left-padded row, a right-padded row and one with pads inside (the ids at pads are random)."""
    ids = random_ids(3, T, seed=5)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[0, :6] = 0
    mask[1, -4:] = 0
    mask[2, 7:10] = 0
    return ids, mask


def _assert_close(new: Tensor, ref: Tensor, what: str) -> None:
    err = (new - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= REL_TOL * scale or err == 0.0, f"{what}: max abs diff {err:.3e}, reference scale {scale:.3e}"


def _loss_and_grads(model, ids: Tensor, mask: Tensor, **kw) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(ids, attention_mask=mask, use_cache=False, **kw).logits
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=logits.dtype)
    (logits * w).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("conv", "gate"), LA_OPTIONS, ids=LA_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_and_gradients_equal_separate_projections(arch, conv, gate, monkeypatch):
    student = _student(arch, conv, gate)
    ids, mask = _padded_batch()
    logits, grads = _loss_and_grads(student, ids, mask)
    monkeypatch.setattr(HybridAttention, "forward", _ref_forward)
    ref_logits, ref_grads = _loss_and_grads(student, ids, mask)
    _assert_close(logits, ref_logits, "logits")
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        _assert_close(grads[name], g, name)


@pytest.mark.parametrize(("conv", "gate"), [(0, False), (4, True)], ids=["plain", "conv_gate"])
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_and_decode_with_cache_equal_separate_projections(arch, conv, gate, monkeypatch):
    """A left-padded prefill into a HybridCache, then two decode steps: logits and LA states (recurrent and
    conv) as with separate projections."""
    student = _student(arch, conv, gate)
    ids, mask = _padded_batch()
    mask[1] = 1  # rows 0 and 2 keep their pads (left, inside); the decoded tokens are real

    def run():
        cache, outs = student.new_cache(), []
        with torch.no_grad():
            for sl in (slice(0, 18), slice(18, 19), slice(19, 20)):
                out = student(ids[:, sl], attention_mask=mask[:, : sl.stop], cache=cache, use_cache=True)
                outs.append(out.logits)
        states = [t for layer in cache.layers for t in layer.la_state.values() if t is not None]
        return outs, states

    outs, states = run()
    monkeypatch.setattr(HybridAttention, "forward", _ref_forward)
    ref_outs, ref_states = run()
    for i, (o, r) in enumerate(zip(outs, ref_outs, strict=True)):
        _assert_close(o, r, f"logits of call {i}")
    assert len(states) == len(ref_states) == (2 if conv else 1) * 2  # layers 0 and 1 have LA heads
    for i, (s, r) in enumerate(zip(states, ref_states, strict=True)):
        _assert_close(s, r, f"LA state {i}")


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_twins_equal_separate_projections(arch, monkeypatch):
    """Stage-1 twins: the alignment pairs and the gradients of a loss on them."""
    student = _student(arch, 4, True, twins=True)
    ids, mask = _padded_batch()

    def run():
        student.zero_grad(set_to_none=True)
        probe = AttentionProbe(alignment=True)
        student(ids, attention_mask=mask, use_cache=False, attention_probe=probe)
        pairs = probe.alignment_pairs(len(decoder_layers(student)))
        loss = sum(((la - fa) ** 2).sum() for fa, la in pairs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        return [la.detach() for _, la in pairs], grads

    las, grads = run()
    monkeypatch.setattr(HybridAttention, "forward", _ref_forward)
    ref_las, ref_grads = run()
    for i, (a, r) in enumerate(zip(las, ref_las, strict=True)):
        _assert_close(a, r, f"twin outputs of layer {i}")
    assert grads.keys() == ref_grads.keys() and any(".la." in n for n in grads)
    for name, g in ref_grads.items():
        _assert_close(grads[name], g, name)


def test_concat_linear_equals_separate_linears():
    """Biases: zeros where a linear has none (runs of them share one block), none at all when none has one."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    lins = [
        torch.nn.Linear(8, n, bias=b, dtype=torch.float64) for n, b in ((3, False), (2, False), (4, True), (1, False))
    ]
    for group in (lins, lins[:2], lins[2:]):
        _assert_close(concat_linear(x, group), torch.cat([lin(x) for lin in group], dim=-1), "projection")


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_project_split_pads_to_the_alignment_and_drops_the_pad(bias):
    """The fused projection's width (here FA q|k and v of 8-wide heads, 14 LA heads' q|k and v, 14 decay and
    14 beta logits: 396, like Qwen3-1.7B's 5,916 not a multiple of 8) is padded up to PROJECTION_ALIGN
    columns: the pieces are the separate linears' outputs, every row has the aligned stride, and the
    gradients of input and parameters are the separate linears' (float64, 1e-10: only the order of additions
    differs)."""
    torch.manual_seed(0)
    widths = [16 + 8, 8, 14 * 16, 14 * 8, 14, 14]  # FA q|k, v, LA q|k, v, a, b
    lins = [torch.nn.Linear(32, n, bias=bias and i != 3, dtype=torch.float64) for i, n in enumerate(widths)]
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    pieces = project_split(x, lins, widths)
    assert [p.shape[-1] for p in pieces] == widths
    assert pieces[0].stride(1) % PROJECTION_ALIGN == 0 and pieces[0].stride(1) > sum(widths)
    refs = [lin(x) for lin in lins]
    params = [x] + [p for lin in lins for p in lin.parameters()]
    douts = [torch.randn_like(r) for r in refs]
    grads = torch.autograd.grad(pieces, params, douts)
    ref_grads = torch.autograd.grad(refs, params, douts)
    for i, (a, r) in enumerate(zip(pieces, refs, strict=True)):
        _assert_close(a, r, f"piece {i}")
    for i, (a, r) in enumerate(zip(grads, ref_grads, strict=True)):
        _assert_close(a, r, f"gradient {i}")
    with pytest.raises(ValueError, match="add up to"):
        project_split(x, lins, widths[:-1])


def test_la_rows_equal_norm_rope_l2_per_tensor():
    """The RMS statistic left out of the LA rows changes nothing (L2 divides it out), with and without norm
    weights and RoPE; a row of zeros stays zero."""
    torch.manual_seed(0)
    B, T, H, D = 2, 6, 3, 8
    qk = torch.randn(B, T, 2 * H, D, dtype=torch.float64) * 3.0
    qk[0, 0] = 0.0
    qw, kw = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    angle = torch.randn(B, T, D // 2, dtype=torch.float64)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    q, k = qk[:, :, :H], qk[:, :, H:]
    for weights in ((qw, kw), (None, None)):
        for rope in ((cos, sin), (None, None)):
            rq, rk = q, k
            if weights[0] is not None:
                rq, rk = _ref_norm(rq, qw, 1e-6, torch.float64), _ref_norm(rk, kw, 1e-6, torch.float64)
            if rope[0] is not None:
                rq, rk = _ref_rope(rq, *rope), _ref_rope(rk, *rope)
            ref = torch.cat([F.normalize(rq, dim=-1), F.normalize(rk, dim=-1)], dim=2)
            _assert_close(
                la_qk_rows(qk, *weights, *rope), ref, f"weights={weights[0] is not None} rope={rope[0] is not None}"
            )


@pytest.mark.parametrize("conv", [0, 4], ids=["plain", "conv"])
def test_prepared_views_feed_the_triton_op(conv):
    """The layer hands the LA kernels views (q and k rows of one tensor, v a slice of the projection; with the
    conv, rows of its output) and SDPA dense FA q/k/v: the fused Triton op (Triton's interpreter on the CPU)
    takes them as they are, and its output and parameter gradients equal the PyTorch definition's (float32,
    1e-4 relative as in tests/kernels)."""
    pytest.importorskip("triton")
    from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton
    from hydrahead_lit.ops.hybrid_attention import hybrid_attention_ref

    teacher = tiny_teacher("qwen3", layers=1, head_dim=16)
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [1]})
    attn = hh.convert(teacher, plan, la_config=hh.LAConfig(short_conv=conv)).model.layers[0].self_attn
    x = torch.randn(2, 40, teacher.config.hidden_size)
    cos, sin = torch.randn(2, 40, 16).cos(), torch.randn(2, 40, 16).sin()

    def run(op):
        fa_pieces, la_pieces = attn._project(x)
        q_fa, k_fa, v_fa = attn._fa_qkv(fa_pieces, cos, sin)
        q, k, v, g, beta, _ = attn.la.prepare(la_pieces, cos, sin)
        assert not q.is_contiguous() and v.stride(-1) == 1
        # FA q/k/v are dense copies: cuDNN SDPA mishandled the strided views on an H200 (see _fa_qkv).
        assert q_fa.is_contiguous() and k_fa.is_contiguous() and v_fa.is_contiguous()
        out = op(
            q_fa, k_fa, v_fa, q, k, v, g, beta, attn.fusion.fa_gain, attn.fusion.la_gain, attn.fusion.eps, attn.scaling
        )
        params = [p for p in attn.parameters() if p.requires_grad]
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return out, torch.autograd.grad(out, params, dout, allow_unused=True)

    out, grads = run(hybrid_attention_triton)
    ref, ref_grads = run(hybrid_attention_ref)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            assert ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < 1e-4
