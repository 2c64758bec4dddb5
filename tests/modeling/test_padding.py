"""Padding: a pad token changes no state. FA heads mask it; LA heads skip it (recurrent and conv state).

Batched generation over left-padded prompts equals generating each prompt alone, for the four families
(Qwen2 and the tiny Llama have q/k/v biases, so a pad would write k = b_k, v = b_v if only its hidden
state were zeroed), with and without the short conv and the output gate.
"""

import pytest
import torch

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.linear_heads import GatedDeltaNetHeads, LAConfig
from tests.modeling.tiny import ARCHS, random_ids, tiny_teacher

# fp32 on CPU. A padded row's LA chunks start at other positions than the prompt's alone, so sums are
# grouped differently: ~1e-7 observed; 1e-4 is the acceptance bound.
PAD_TOL = 1e-4
PAD_ID = 0
LA_CONFIGS = [LAConfig(), LAConfig(short_conv=4, output_gate=True)]
LA_IDS = ["default", "conv_gate"]


def _student(arch: str, la: LAConfig, fa_groups: dict | None = None, **teacher_kw):
    teacher = tiny_teacher(arch, **teacher_kw)
    plan = hh.HeadPlan.from_fa_groups(teacher.config, fa_groups if fa_groups is not None else {0: [1], 1: []})
    student = hh.convert(teacher, plan, la_config=la)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial new LA parameters (input-dependent gates, a real conv and output gate)
        for layer in decoder_layers(student):
            la_heads = layer.self_attn.la
            if la_heads is None:
                continue
            for p in (la_heads.a_proj.weight, la_heads.b_proj.weight):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            if la_heads.conv is not None:
                la_heads.conv.add_(0.3 * torch.randn(la_heads.conv.shape, generator=gen))
            if la_heads.g_proj is not None:
                la_heads.g_proj.weight.copy_(0.1 * torch.randn(la_heads.g_proj.weight.shape, generator=gen))
    return student


def _prompts(lengths=(9, 4, 12)) -> list[torch.Tensor]:
    return [random_ids(1, n, seed=10 + i)[0].clamp_min(1) for i, n in enumerate(lengths)]  # no pad id inside


def _pad(prompts: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    device = prompts[0].device
    ids = torch.full((len(prompts), T), PAD_ID, device=device)
    mask = torch.zeros(len(prompts), T, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[i, sl], mask[i, sl] = p, 1
    return ids, mask


def _generate(model, ids, mask):
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip


@pytest.mark.parametrize("la", LA_CONFIGS, ids=LA_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_generate_equals_each_prompt_alone(arch, la):
    student = _student(arch, la)
    prompts = _prompts()
    ids, mask = _pad(prompts, "left")
    T = ids.shape[1]
    batched = _generate(student, ids, mask)
    for i, p in enumerate(prompts):
        alone = _generate(student, p[None], torch.ones(1, len(p), dtype=torch.long))
        new = alone.sequences[0, len(p) :]
        assert torch.equal(batched.sequences[i, T : T + len(new)], new)
        for step, (b, a) in enumerate(zip(batched.scores, alone.scores)):
            assert (b[i] - a[0]).abs().max().item() <= PAD_TOL, f"prompt {i}, step {step}"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # the families with q/k/v biases
def test_right_padded_forward_equals_each_prompt_alone(arch):
    """Training forward: right pads change nothing at the real positions, through the causal LM and
    through a direct call of the decoder model."""
    student = _student(arch, LA_CONFIGS[1])
    prompts = _prompts()
    ids, mask = _pad(prompts, "right")
    with torch.no_grad():
        logits = student(ids, attention_mask=mask, use_cache=False).logits
        hidden = student.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for i, p in enumerate(prompts):
            alone = student(p[None], use_cache=False, output_hidden_states=True)
            n = len(p)
            assert (logits[i, :n] - alone.logits[0]).abs().max().item() <= PAD_TOL
            assert (hidden[i, :n] - alone.hidden_states[-1][0]).abs().max().item() <= PAD_TOL  # both after the norm


@pytest.mark.parametrize("la", LA_CONFIGS, ids=LA_IDS)
def test_right_padded_prefill_then_decode_equals_each_prompt_alone(la):
    """The LA state after a right-padded prefill holds no pad: decoding the next token from it gives
    what the unpadded prompt gives (FA heads mask the pad keys kept in their cache)."""
    student = _student("qwen2", la)
    prompts = _prompts()
    ids, mask = _pad(prompts, "right")
    nxt = torch.tensor([[5], [7], [11]])
    lengths = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        cache = student.new_cache()
        kw = {student._cache_kwarg(): cache, "use_cache": True}
        student(ids, attention_mask=mask, **kw)
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        step = student(nxt, attention_mask=step_mask, position_ids=lengths[:, None], **kw).logits[:, -1]
        for i, p in enumerate(prompts):
            alone = student(torch.cat([p, nxt[i]])[None], use_cache=False).logits[0, -1]
            assert (step[i] - alone).abs().max().item() <= PAD_TOL


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "carried"])
def test_la_heads_skip_pads_anywhere(with_state):
    """Interleaved pads at the heads: outputs at real positions and the final recurrent and conv state
    equal those of the real tokens alone (biased projections: zeroing inputs would not be enough)."""
    torch.manual_seed(0)
    heads = GatedDeltaNetHeads(32, 3, 8, LAConfig(short_conv=3, output_gate=True, use_rope=False), bias=True)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.2 * torch.randn_like(p))
    B, T = 3, 11
    x = torch.randn(B, T, 32)
    valid = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) > 0.35
    valid[2] = False  # a row of pads only
    start = None
    if with_state:
        warm = {"recurrent": None, "conv": None}
        heads(torch.randn(B, 5, 32), None, None, warm)
        start = warm
    state = {k: None if start is None else start[k].clone() for k in ("recurrent", "conv")}
    with torch.no_grad():
        out = heads(x, None, None, state, valid=valid)
        for b in range(B):
            alone = {k: None if start is None else start[k][b : b + 1].clone() for k in ("recurrent", "conv")}
            if valid[b].any():
                o = heads(x[b : b + 1, valid[b]], None, None, alone)
                assert (out[b, valid[b]] - o[0]).abs().max().item() <= 1e-5
                for k in ("recurrent", "conv"):
                    assert (state[k][b] - alone[k][0]).abs().max().item() <= 1e-5, k
            elif start is not None:  # nothing real: the carried state is unchanged, bit for bit
                assert all(torch.equal(state[k][b], start[k][b]) for k in ("recurrent", "conv"))
            else:
                assert not state["recurrent"][b].any() and not state["conv"][b].any()


def test_a_4d_mask_is_refused_with_la_heads_and_kept_without():
    student = _student("qwen3", LAConfig())
    ids = random_ids(batch=1, length=6)
    mask4 = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="needs the 2-D padding mask"):
        student(ids, attention_mask=mask4, use_cache=False)
    all_fa = _student("qwen3", LAConfig(), fa_groups={0: [0, 1], 1: [0, 1]})
    with torch.no_grad():
        all_fa(ids, attention_mask=mask4, use_cache=False)


def test_a_mask_shorter_than_the_input_is_refused():
    student = _student("llama", LAConfig())
    ids = random_ids(batch=2, length=6)
    with pytest.raises(ValueError, match="must cover the past and the new tokens"):
        student(ids, attention_mask=torch.ones(2, 4, dtype=torch.long), use_cache=False)


def test_padding_hook_survives_save_load(tmp_path):
    student = _student("qwen2", LA_CONFIGS[1])
    student.save_pretrained(tmp_path / "s")
    loaded = hh.load_student(tmp_path / "s")
    prompts = _prompts()
    ids, mask = _pad(prompts, "left")
    with torch.no_grad():
        out = loaded(ids, attention_mask=mask, use_cache=False).logits[:, -1]
        for i, p in enumerate(prompts):
            alone = loaded(p[None], use_cache=False).logits[0, -1]
            assert (out[i] - alone).abs().max().item() <= PAD_TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_padded_forward_on_cuda_takes_a_path_that_skips_pads():
    """On CUDA the fused hybrid op does not handle pads: a padded batch must take the composed path."""
    student = _student("qwen3", LAConfig(), head_dim=32).cuda()  # the Triton kernels take power-of-two head dims
    prompts = [p.cuda() for p in _prompts((70, 33, 129))]
    ids, mask = _pad(prompts, "right")
    with torch.no_grad():
        logits = student(ids, attention_mask=mask, use_cache=False).logits
        for i, p in enumerate(prompts):
            alone = student(p[None], use_cache=False).logits[0]
            assert (logits[i, : len(p)] - alone).abs().max().item() <= 1e-3  # fp32 with tf32 kernels
