"""Conversion, hybrid forward, decoding with the hybrid cache, and export (issue acceptance tests)."""

import inspect

import pytest
import torch
import transformers

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.probe import AttentionProbe
from tests.modeling.tiny import ARCHS, random_ids, tiny_teacher

# fp32 on CPU: the student runs the same ops as the teacher on permuted rows/columns, so differences are
# only summation-order rounding (~1e-7); 1e-5 is the acceptance bound.
ALL_FA_TOL = 1e-5
# Decode vs full forward: the LA heads switch from the chunked to the recurrent form (different summation
# order, fp32): ~1e-6 observed; 1e-4 is the acceptance bound.
DECODE_TOL = 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("permuted", [False, True], ids=["identity", "permuted"])
def test_all_fa_student_equals_teacher(arch, permuted):
    teacher = tiny_teacher(arch)
    ids = random_ids()
    with torch.no_grad():
        ref = teacher(ids).logits
    groups = [1, 0] if permuted else [0, 1]
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: groups, 1: groups})
    student = hh.convert(teacher, plan)
    if permuted:  # the FA projections really are permuted: group 1's rows now come first
        d = student.model.layers[0].self_attn.head_dim
        k_teacher = teacher.model.layers[0].self_attn.k_proj.weight
        assert torch.equal(student.model.layers[0].self_attn.k_proj.weight[:d], k_teacher[d:])
    with torch.no_grad():
        out = student(ids).logits
    assert (out - ref).abs().max().item() <= ALL_FA_TOL


def test_convert_leaves_teacher_untouched():
    teacher = tiny_teacher("qwen3")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    hh.convert(teacher, hh.HeadPlan.all_la(teacher.config))
    assert type(teacher) is transformers.Qwen3ForCausalLM
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "la", [hh.LAConfig(), hh.LAConfig(short_conv=4, output_gate=True, use_rope=False)], ids=["default", "conv_gate"]
)
def test_prefill_then_decode_matches_full_forward(arch, la):
    teacher = tiny_teacher(arch)
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [1], 1: []})  # one mixed layer, one all-LA layer
    student = hh.convert(teacher, plan, la_config=la)
    with torch.no_grad():  # make the new LA parameters non-trivial so decoding exercises them
        for layer in decoder_layers(student):
            layer.self_attn.la.a_proj.weight.normal_(std=0.1)
            layer.self_attn.la.b_proj.weight.normal_(std=0.1)
    ids = random_ids(batch=3, length=29)
    with torch.no_grad():
        full = student(ids, use_cache=False).logits
        cache = student.new_cache()
        kw = {student._cache_kwarg(): cache, "use_cache": True}
        steps = [student(ids[:, :17], **kw).logits]
        steps += [student(ids[:, t : t + 1], **kw).logits for t in range(17, ids.shape[1])]
    assert (torch.cat(steps, 1) - full).abs().max().item() <= DECODE_TOL
    assert cache.get_seq_length() == ids.shape[1]


def test_cache_bytes_at_7_to_1():
    teacher = tiny_teacher("qwen3", layers=4)  # 4 layers x 2 KV groups = 8 groups -> 7:1 keeps one group
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {2: [1]})
    assert plan.ratio == 7.0
    student = hh.convert(teacher, plan)
    B, T = 2, 40
    ids = random_ids(batch=B, length=T)
    with torch.no_grad():
        tcache = transformers.DynamicCache(config=teacher.config)
        teacher(ids, use_cache=True, **{student._cache_kwarg(): tcache})
        cache = student.new_cache()
        student(ids, use_cache=True, **{student._cache_kwarg(): cache})
    teacher_bytes = sum(l.keys.numel() * l.keys.element_size() * 2 for l in tcache.layers)
    expected = student.cache_bytes(B, T, torch.float32)
    assert expected["teacher_kv"] == teacher_bytes
    assert expected["kv"] * 8 == teacher_bytes  # 1/8 of the teacher's KV bytes ...
    D = student.model.layers[0].self_attn.head_dim
    assert expected["la_state"] == 14 * D * D * 4 * B  # ... plus one fp32 [D, D] state per LA head (14 of 16)
    assert cache.kv_nbytes() == expected["kv"] and cache.la_nbytes() == expected["la_state"]


def test_save_load_roundtrip_and_generate(tmp_path):
    teacher = tiny_teacher("qwen2")
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {1: [0]}), hh.LAConfig(short_conv=3))
    ids = random_ids()
    student.save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").is_file()
    loaded = hh.load_student(tmp_path / "student")
    assert type(loaded).__name__ == "HydraHeadQwen2ForCausalLM"
    assert loaded.head_plan == student.head_plan
    with torch.no_grad():
        assert torch.equal(loaded(ids, use_cache=False).logits, student(ids, use_cache=False).logits)
    out = loaded.generate(ids[:, :5], max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 12)
    # greedy generation = argmax of full forwards, token by token
    with torch.no_grad():
        seq = ids[:, :5]
        for _ in range(7):
            nxt = loaded(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_prefill_computes_the_last_positions_logits_only(arch):
    """generate() passes `logits_to_keep=1` to the prefill only when the forward's signature names it: the
    student's must, or a 10 x 16K prompt batch gets 16K positions of vocabulary logits (an OOM on a GPU)."""
    teacher = tiny_teacher(arch)
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {1: [0]}))
    assert "logits_to_keep" in inspect.signature(student.forward).parameters
    rows = []
    hook = student.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    try:
        out = student.generate(random_ids(length=20), max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        hook.remove()
    assert out.shape == (2, 23)
    assert rows == [1, 1, 1], f"positions projected to the vocabulary per forward: {rows}"


def test_load_student_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        hh.load_student(tmp_path)
    tiny_teacher("llama").save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a HydraHead student"):
        hh.load_student(tmp_path / "plain")


def test_unsupported_architecture_is_named():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="'gpt2'.*not supported"):
        hh.convert(gpt2, None, twins=True)


def test_plan_for_another_model_is_refused():
    teacher = tiny_teacher("qwen3")
    other = hh.HeadPlan.all_la(tiny_teacher("qwen3", layers=3).config)
    with pytest.raises(ValueError, match="plan is for"):
        hh.convert(teacher, other)


def test_twins_expose_both_outputs_and_hand_over_to_stage_2():
    teacher = tiny_teacher("qwen3")
    ids = random_ids()
    twin = hh.convert(teacher, None, twins=True)
    captured = {}
    hook = teacher.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a: captured.setdefault("x", a[0])
    )
    probe = AttentionProbe(alignment=True)
    with torch.no_grad():
        ref = teacher(ids).logits
        out = twin(ids, attention_probe=probe).logits
    hook.remove()
    assert (out - ref).abs().max().item() <= ALL_FA_TOL  # twins never change the layer output
    fa, la = probe.alignment_pairs(2)[1]
    assert torch.allclose(fa.flatten(2), captured["x"], atol=1e-6)  # per-head teacher outputs
    assert la.shape == fa.shape
    # "train" the twins, then build a stage-2 student: its LA heads are the twins of the LA heads
    with torch.no_grad():
        for layer in decoder_layers(twin):
            layer.self_attn.la.b_proj.bias.copy_(torch.arange(4.0))
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [1]})
    student = hh.convert(twin, plan)
    la0 = student.model.layers[0].self_attn.la
    assert la0.b_proj.bias.tolist() == [0.0, 1.0]  # layer 0 keeps group 1 (heads 2, 3): heads 0, 1 are LA
    assert student.model.layers[1].self_attn.la.b_proj.bias.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="again"):
        hh.convert(student, plan)


def test_probe_rows_equal_eager_attention_weights():
    teacher = tiny_teacher("llama")
    teacher.config._attn_implementation = "eager"
    ids = random_ids(batch=1, length=21)
    with torch.no_grad():
        weights = teacher(ids, output_attentions=True).attentions[1]  # [B, H, T, T]
    twin = hh.convert(teacher, None, twins=True)
    rows = torch.tensor([3, 20])
    probe = AttentionProbe(rows=rows)
    with torch.no_grad():
        twin(ids, attention_probe=probe)
    assert torch.allclose(probe.attention[1], weights[:, :, rows], atol=1e-6)


def test_patching_replaces_only_the_chosen_heads():
    teacher = tiny_teacher("qwen3")
    twin = hh.convert(teacher, None, twins=True)
    ids = random_ids()
    with torch.no_grad():
        base = twin(ids).logits
        patched = twin(ids, attention_probe=AttentionProbe(patch={1: [0, 1]})).logits
    assert not torch.allclose(base, patched)
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, base)


@pytest.mark.parametrize("fa_groups", [[1], [], [0, 1]], ids=["mixed", "all_la", "all_fa"])
def test_fused_op_wiring_equals_composed_path(fa_groups):
    """The fused hybrid op (Triton on CUDA; its PyTorch reference here) gets the same q/k/v, gates, gains
    and scale as the composed path: equal layer outputs."""
    teacher = tiny_teacher("qwen3")
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: fa_groups, 1: fa_groups}))
    attn = student.model.layers[0].self_attn
    if attn.la is None:
        pytest.skip("no LA heads: the fused op is not used")
    with torch.no_grad():
        attn.fusion.la_gain.uniform_(0.5, 2.0)
        if attn.fusion.fa_gain is not None:
            attn.fusion.fa_gain.uniform_(0.5, 2.0)
    x = torch.randn(2, 19, teacher.config.hidden_size)
    pos = torch.arange(19)[None].expand(2, -1)
    cos, sin = student.model.rotary_emb(x, pos)
    with torch.no_grad():
        composed, _ = attn(x, position_embeddings=(cos, sin), attention_mask=None)
        fused = attn.o_proj(attn._fused_forward(x, cos, sin).reshape(2, 19, -1))
    assert (fused - composed).abs().max().item() <= 1e-5
