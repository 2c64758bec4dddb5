"""`AttentionProbe`: stage-1 pairs, attention rows and patching travel with the forward, not on modules."""

import pytest
import torch

import hydrahead_lit as hh
from hydrahead_lit.lit.losses import head_alignment_loss
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.parallel import enable_activation_checkpointing
from tests.modeling.tiny import random_ids, tiny_teacher


def _twin(arch: str = "qwen3"):
    teacher = tiny_teacher(arch)
    return hh.convert(teacher, None, twins=True, la_config=hh.LAConfig(short_conv=4, output_gate=True))


def _stage1_step(model, ids):
    probe = AttentionProbe(alignment=True)
    model(input_ids=ids, use_cache=False, logits_to_keep=1, attention_probe=probe)
    pairs = probe.alignment_pairs(len(decoder_layers(model)))
    loss, _ = head_alignment_loss(pairs)
    return probe, pairs, loss


def test_activation_checkpointing_recompute_records_nothing_new():
    """Under non-reentrant checkpointing the backward replays each block's forward with the same probe:
    the pairs stay the forward's own (none appended or replaced) and the gradients equal the plain run's."""
    ids = random_ids(batch=2, length=21)
    plain = _twin().train()
    _, _, loss = _stage1_step(plain, ids)
    loss.backward()
    ckpt = _twin().train()
    ckpt.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(ckpt)  # non-reentrant, as the stages run it
    calls = []
    for layer in decoder_layers(ckpt):
        layer.self_attn.la.register_forward_hook(lambda *a: calls.append(1))
    probe, pairs, loss_ckpt = _stage1_step(ckpt, ids)
    before = {i: tuple(map(id, pair)) for i, pair in probe.alignments.items()}
    loss_ckpt.backward()
    assert len(calls) == 2 * len(decoder_layers(ckpt))  # every block's forward really ran again
    assert {i: tuple(map(id, pair)) for i, pair in probe.alignments.items()} == before
    assert len(probe.alignments) == len(decoder_layers(ckpt)) and not probe.attention
    assert torch.equal(loss_ckpt.detach(), loss.detach())
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads and all(".self_attn.la." in n or ".self_attn.fusion." in n for n in grads)
    for n, p in ckpt.named_parameters():
        assert (p.grad is None) == (n not in grads), n
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7)


def test_nothing_is_left_on_the_modules():
    twin = _twin()
    probe = AttentionProbe(alignment=True, rows=torch.tensor([2, 5]), patch={0: [1]})
    with torch.no_grad():
        twin(random_ids(), attention_probe=probe)
    assert len(probe.alignments) == 2 and len(probe.attention) == 2
    for layer in decoder_layers(twin):
        held = [k for k, v in vars(layer.self_attn).items() if isinstance(v, (torch.Tensor, AttentionProbe))]
        assert held == [], held


def test_a_plain_forward_runs_no_twin():
    """Without a probe asking for them the twins' output is unused, so they are not run (same output)."""
    twin = _twin()
    ids = random_ids()
    calls = []
    hooks = [layer.self_attn.la.register_forward_hook(lambda *a: calls.append(1)) for layer in decoder_layers(twin)]
    with torch.no_grad():
        out = twin(ids).logits
        assert calls == []
        assert torch.equal(twin(ids, attention_probe=AttentionProbe(alignment=True)).logits, out)
    assert len(calls) == 2
    for h in hooks:
        h.remove()


def test_compiled_layer_records_into_the_probe():
    """torch.compile (dynamo, eager backend: no C++ toolchain needed) keeps the probe's side effects."""
    twin = _twin().eval()
    attn = decoder_layers(twin)[1].self_attn
    x = torch.randn(2, 9, twin.config.hidden_size)
    pos = torch.arange(9)[None].expand(2, -1)
    cos, sin = twin.model.rotary_emb(x, pos)
    rows = torch.tensor([3, 8])
    eager = AttentionProbe(alignment=True, rows=rows, patch={1: [0, 3]})
    compiled = AttentionProbe(alignment=True, rows=rows, patch={1: [0, 3]})
    with torch.no_grad():
        ref, _ = attn(x, position_embeddings=(cos, sin), attention_probe=eager)
        out, _ = torch.compile(attn, backend="eager")(x, position_embeddings=(cos, sin), attention_probe=compiled)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(compiled.attention[1], eager.attention[1])
    for a, b in zip(compiled.alignments[1], eager.alignments[1]):
        torch.testing.assert_close(a, b)


def test_patching_a_layer_without_twins_is_refused():
    teacher = tiny_teacher("llama")
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: [0], 1: [1]}))
    with pytest.raises(ValueError, match="no LA twins to patch"):
        student(random_ids(), attention_probe=AttentionProbe(patch={1: [0]}))


def test_missing_alignment_pairs_are_named():
    teacher = tiny_teacher("qwen2")
    student = hh.convert(teacher, hh.HeadPlan.all_la(teacher.config))
    probe = AttentionProbe(alignment=True)
    with torch.no_grad():
        student(random_ids(), attention_probe=probe)
    with pytest.raises(ValueError, match=r"no alignment pair from layer\(s\) \[0, 1\]"):
        probe.alignment_pairs(2)
    with pytest.raises(ValueError, match="1-D tensor of positions"):
        AttentionProbe(rows=torch.tensor([[1.0]]))


def test_a_twin_model_deep_copies_after_a_stage1_forward():
    """Nothing with a graph stays on the modules, so converting right after a training forward works."""
    twin = _twin().train()
    _, _, loss = _stage1_step(twin, random_ids())
    teacher_plan = hh.HeadPlan.from_fa_groups(twin.config, {0: [1], 1: []})
    student = hh.convert(twin, teacher_plan)
    assert student.head_plan == teacher_plan
    loss.backward()
