"""`logit_losses` (gradients taken in the forward pass) against `chunked_logit_losses` (autograd).

Both paths take the logits to float32 whatever the input dtype (as in bf16 training), so the float64
cases agree to float32 rounding, summed in a different order: 1e-5 relative, 1e-6 absolute (the
reference's own test against unchunked losses uses the same). The model cases say theirs.
"""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hydrahead_lit.lit import DistillationModule
from hydrahead_lit.lit.linear_losses import logit_losses
from hydrahead_lit.lit.losses import chunked_logit_losses

D, V = 8, 37


def _heads(bias: bool, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(1)
    student, teacher = nn.Linear(D, V, bias=bias), nn.Linear(D, V, bias=bias)
    for head in (student, teacher):
        head.to(dtype)
        with torch.no_grad():
            head.weight.mul_(scale)
    teacher.requires_grad_(False)
    return student, teacher


def _reference(h, student, tgt, mask, h_t, teacher, tau, chunk, ce_w, kd_w):
    ce, kl = chunked_logit_losses(h, student, tgt, mask, h_t, teacher, tau, chunk)
    return ce_w * ce + kd_w * kl, ce, kl


def _grads(loss, h, head):
    params = [h, *head.parameters()]
    return torch.autograd.grad(loss, params)


def _inputs(B=2, T=11, dtype=torch.float64, correlated=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g, dtype=dtype)
    if correlated:  # real final hidden states are strongly correlated across positions
        h = h[:, :1] + 0.05 * h
    h_t = h + 0.3 * torch.randn(B, T, D, generator=g, dtype=dtype)
    tgt = torch.randint(0, V, (B, T), generator=g)
    tgt[0, -3:] = -100  # ignored positions
    tgt[1, 2] = tgt[1, 3] = tgt[1, 4]  # repeated targets
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, -4:] = False  # padding
    return h.requires_grad_(True), h_t, tgt, mask


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_the_reference(chunk: int, tau: float, weights: tuple[float, float], bias: bool) -> None:
    ce_w, kd_w = weights
    student, teacher = _heads(bias)
    h, h_t, tgt, mask = _inputs(correlated=chunk == 4)
    ref = _reference(h, student, tgt, mask, h_t, teacher, tau, chunk, ce_w, kd_w)
    ref_grads = _grads(ref[0], h, student)
    out = logit_losses(h, student, tgt, mask, h_t, teacher, tau, chunk, ce_weight=ce_w, kd_weight=kd_w)
    grads = _grads(out[0], h, student)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not out[1].requires_grad and not out[2].requires_grad


@pytest.mark.parametrize("case", ["ce_only", "kd_only_no_targets"])
def test_one_term(case: str) -> None:
    student, teacher = _heads(False)
    h, h_t, tgt, mask = _inputs()
    if case == "ce_only":
        args = dict(targets=tgt, mask=mask, ce_weight=1.0, kd_weight=0.0)
        ref_loss = chunked_logit_losses(h, student, tgt, mask, chunk_size=5)[0]
    else:
        args = dict(mask=mask, teacher_hidden=h_t, teacher_head=teacher, ce_weight=0.0, kd_weight=1.0)
        ref_loss = chunked_logit_losses(h, student, None, mask, h_t, teacher, chunk_size=5)[1]
    loss, _, _ = logit_losses(h, student, chunk_size=5, **args)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(loss, h, student), _grads(ref_loss, h, student)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_peaked_logits_and_an_identical_teacher() -> None:
    """Near one-hot softmaxes (large logits) stay finite; a teacher equal to the student gives KL 0 and
    a KL gradient of 0."""
    student, _ = _heads(False, scale=60.0)
    h, _, tgt, mask = _inputs()
    loss, ce, kl = logit_losses(h, student, tgt, mask, h.detach(), student, 1.0, 5, ce_weight=0.0, kd_weight=1.0)
    assert torch.isfinite(ce) and kl.abs() < 1e-6
    for g in _grads(loss, h, student):
        assert torch.isfinite(g).all() and g.abs().max() < 1e-6
    ref = _reference(h, student, tgt, mask, None, None, 1.0, 5, 1.0, 0.0)
    out = logit_losses(h, student, tgt, mask, chunk_size=5)
    for a, b in zip(_grads(out[0], h, student), _grads(ref[0], h, student)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_everything_masked_gives_zero_not_nan() -> None:
    student, teacher = _heads(False)
    h, h_t, tgt, _ = _inputs()
    mask = torch.zeros(tgt.shape, dtype=torch.bool)
    loss, ce, kl = logit_losses(h, student, tgt, mask, h_t, teacher, 2.0, 4, ce_weight=0.5, kd_weight=0.5)
    assert loss.item() == 0.0 and ce.item() == 0.0 and kl.item() == 0.0
    assert all(g.abs().max() == 0 for g in _grads(loss, h, student))


def test_tied_embedding_accumulates_both_gradients() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(V, D).double()
    head = nn.Linear(D, V, bias=False).double()
    head.weight = emb.weight  # tied, as in SmolLM2
    ids = torch.randint(0, V, (2, 6))
    tgt = torch.randint(0, V, (2, 6))

    def run(fused: bool) -> torch.Tensor:
        emb.zero_grad()
        h = torch.tanh(emb(ids))
        loss, _, _ = logit_losses(h, head, tgt, chunk_size=5, fused=fused)
        loss.backward()
        return emb.weight.grad.clone()

    torch.testing.assert_close(run(True), run(False), rtol=1e-5, atol=1e-6)


def test_no_grad_gives_the_same_values() -> None:
    student, teacher = _heads(True)
    h, h_t, tgt, mask = _inputs()
    with_grad = logit_losses(h, student, tgt, mask, h_t, teacher, 2.0, 3, ce_weight=0.2, kd_weight=0.8)
    with torch.no_grad():
        without = logit_losses(h, student, tgt, mask, h_t, teacher, 2.0, 3, ce_weight=0.2, kd_weight=0.8)
    for a, b in zip(with_grad, without):
        torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-7)


def test_a_head_that_is_not_a_linear_uses_the_reference() -> None:
    student, teacher = _heads(False)
    h, h_t, tgt, mask = _inputs()
    fn = lambda x: student(x)  # noqa: E731
    a = logit_losses(h, fn, tgt, mask, h_t, teacher, 1.0, 4, ce_weight=1.0, kd_weight=1.0)
    b = logit_losses(h, student, tgt, mask, h_t, teacher, 1.0, 4, ce_weight=1.0, kd_weight=1.0)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_refuses_weights_without_their_terms() -> None:
    student, teacher = _heads(False)
    h, h_t, tgt, mask = _inputs()
    with pytest.raises(ValueError, match="ce_weight must be 0 without targets"):
        logit_losses(h, student, None, mask, h_t, teacher, ce_weight=1.0, kd_weight=1.0)
    with pytest.raises(ValueError, match="kd_weight must be 0 without a teacher"):
        logit_losses(h, student, tgt, mask, kd_weight=1.0)
    with pytest.raises(ValueError, match="temperature"):
        logit_losses(h, student, tgt, mask, temperature=0.0)


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=seed == 0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_a_models_hidden_states(dtype: torch.dtype) -> None:
    """Final hidden states of a (tiny, random) Llama and its lm_head, student tied, teacher not; bf16 as
    stage 2 trains. Tolerances: float32 1e-5 (summation order); bf16 1e-2 relative in norm (3.3e-3
    measured), the rounding of bf16 logits and GEMM outputs, which the reference has too."""
    student, teacher = _tiny_llama(0).to(dtype), _tiny_llama(1).to(dtype)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(3))
    ids[1, 10:20] = ids[1, :10]  # a repeated span
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, -7:] = False
    tgt = ids.roll(-1, 1)
    with torch.no_grad():
        h_t = teacher(input_ids=ids, output_hidden_states=True).hidden_states[-1]

    def run(fused: bool):
        student.zero_grad()
        h = student(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        loss, ce, kl = logit_losses(
            h, student.lm_head, tgt, mask, h_t, teacher.lm_head, 1.0, 16, ce_weight=0.5, kd_weight=1.0, fused=fused
        )
        loss.backward()
        grads = {n: p.grad.float().clone() for n, p in student.named_parameters() if p.grad is not None}
        return loss.detach().float(), ce.float(), kl.float(), grads

    fused, ref = run(True), run(False)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(fused[:3], ref[:3]):
        assert (a - b).abs() <= tol * b.abs().clamp_min(1e-3), (a, b)
    assert fused[3].keys() == ref[3].keys()
    for name, g in fused[3].items():
        r = ref[3][name]
        assert torch.isfinite(g).all(), name
        err = (g - r).norm() / r.norm().clamp_min(1e-12)
        assert err <= tol, (name, err.item())


def test_a_distillation_step_of_the_demo_teacher() -> None:
    """Stage 2's own step (`DistillationModule._loss`) on the committed, trained demo teacher converted
    with one FA KV group of eight, fused vs reference: the same loss, and gradients within float32
    rounding (1e-6 relative in norm measured on the demo's stage-1 student; the limit 1e-5 leaves room
    for other cores' summation order)."""
    root = Path(__file__).resolve().parents[2]
    module = DistillationModule(
        teacher=str(root / "data/demo/teacher"), init_from=None,
        plan={"method": "manual", "fa_groups": {"1": [0]}},  # one FA KV group of eight, as the demo keeps
    )  # fmt: skip
    module.configure_model()
    module.teacher.requires_grad_(False).eval()
    ids = torch.randint(0, module.student.config.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))

    def run(fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
        module.hparams.fused_loss = fused
        module.student.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() outside a Trainer
            loss = module._loss({"input_ids": ids}, "train")
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}

    (loss, grads), (ref_loss, ref_grads) = run(True), run(False)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys() and "model.embed_tokens.weight" in grads  # the tied head's gradient
    for name, g in grads.items():
        err = (g - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-30)
        assert err < 1e-5, (name, err.item())
