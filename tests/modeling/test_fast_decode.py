"""The fused single-token decode step: the eager path's logits (fp32, 1e-5), batched left-padded generation
equal to one prompt at a time, per-row stopping, and (on a GPU) the CUDA-graph path equal to eager."""

import logging

import pytest
import torch
import torch.nn.functional as F

import hydrahead_lit as hh
from hydrahead_lit.modeling import fast_decode
from hydrahead_lit.modeling.decode_step import attention_block, decode_attention
from hydrahead_lit.modeling.fast_decode import FastDecoder, generate_fast
from hydrahead_lit.modeling.static_cache import HybridStaticCache
from tests.modeling.test_static_cache import LA_CONFIGS, LA_IDS, left_padded, run, student
from tests.modeling.tiny import ARCHS, tiny_teacher

TOL = 1e-5
PAD_TOL = 1e-4  # a prompt alone sits at other positions and LA chunk boundaries than in a padded batch
PAD_ID = 0


def run_fast(model, ids, mask, steps: int, **decoder_kw) -> list[torch.Tensor]:
    """Prefill through the model's forward, then greedy steps through a FastDecoder."""
    cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + steps)
    decoder = FastDecoder(model, cache, **decoder_kw)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, use_cache=True, **{model._cache_kwarg(): cache}).logits[:, -1]
    out = [logits]
    for _ in range(steps):
        logits = decoder.step(logits.argmax(-1, keepdim=True)).clone()
        out.append(logits)
    return out


@pytest.mark.parametrize("la", LA_CONFIGS, ids=LA_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_step_equals_the_eager_dynamic_path(arch, la):
    model = student(arch, la)
    ids, mask = left_padded()
    eager = run(model, model.new_cache(), ids, mask, steps=5)
    fast = run_fast(model, ids, mask, steps=5)
    for step, (a, b) in enumerate(zip(eager, fast)):
        assert (a - b).abs().max().item() <= TOL, f"call {step}"


def test_fast_step_handles_rows_of_one_token_and_no_padding():
    model = student("qwen3", LA_CONFIGS[1])
    ids, _ = left_padded(lengths=(1, 1))
    eager = run(model, model.new_cache(), ids, None, steps=3)
    fast = run_fast(model, ids, None, steps=3)
    assert all((a - b).abs().max().item() <= TOL for a, b in zip(eager, fast))


def test_a_sliding_window_is_applied_as_the_model_masks_it():
    """Mistral slides every layer when `sliding_window` is set; the step masks the same slots."""
    teacher = tiny_teacher("mistral", layers=2, sliding_window=6)
    model = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: [1], 1: [0, 1]}))
    ids, mask = left_padded()
    eager = run(model, model.new_cache(), ids, mask, steps=5)
    fast = run_fast(model, ids, mask, steps=5)
    assert all((a - b).abs().max().item() <= TOL for a, b in zip(eager, fast))


def _generate(model, ids, mask, fast, **kw):
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID, fast=fast,
        output_scores=True, return_dict_in_generate=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_left_padded_fast_generate_equals_each_prompt_alone(arch):
    model = student(arch, LA_CONFIGS[1])
    ids, mask = left_padded()
    T = ids.shape[1]
    batched = _generate(model, ids, mask, fast=True)
    eager_batched = _generate(model, ids, mask, fast=False)
    assert torch.equal(batched.sequences, eager_batched.sequences)
    for b, e in zip(batched.scores, eager_batched.scores):
        assert (b - e).abs().max().item() <= TOL
    for i in range(ids.shape[0]):
        prompt = ids[i, mask[i].bool()][None]
        alone = _generate(model, prompt, torch.ones_like(prompt), fast=False)
        assert torch.equal(batched.sequences[i, T:], alone.sequences[0, prompt.shape[1] :])
        for step, (b, a) in enumerate(zip(batched.scores, alone.scores)):
            assert (b[i] - a[0]).abs().max().item() <= PAD_TOL, f"prompt {i}, step {step}"


def test_rows_stop_at_their_own_eos_and_the_others_go_on():
    """generate() feeds pads (marked real) to a finished row; the other rows are untouched by them."""
    model = student("qwen2", LA_CONFIGS[1])
    ids, mask = left_padded()
    T = ids.shape[1]
    alone_ids = [ids[i, mask[i].bool()][None] for i in range(ids.shape[0])]
    free = _generate(model, alone_ids[0], torch.ones_like(alone_ids[0]), fast=False).sequences[0]
    eos = int(free[alone_ids[0].shape[1] + 1])  # row 0 stops after its second new token
    batched = _generate(model, ids, mask, fast=True, eos_token_id=eos).sequences
    stopped = False
    for i, prompt in enumerate(alone_ids):
        alone = _generate(model, prompt, torch.ones_like(prompt), fast=False, eos_token_id=eos).sequences[0]
        new = alone[prompt.shape[1] :]
        assert torch.equal(batched[i, T : T + len(new)], new)
        assert (batched[i, T + len(new) :] == PAD_ID).all()  # pads after this row's EOS
        stopped |= len(new) < 6
    assert stopped and (batched[0, T + 2 :] == PAD_ID).all()


def test_the_fused_projection_follows_parameter_changes():
    model = student("llama", LA_CONFIGS[1])
    ids, mask = left_padded()
    cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + 2)
    decoder = FastDecoder(model, cache)
    with torch.no_grad():
        for layer in model.model.layers:  # in place, as an optimizer step or load_state_dict would
            if layer.self_attn.q_proj is not None:
                layer.self_attn.q_proj.weight.mul_(1.5)
            if layer.self_attn.la is not None:
                layer.self_attn.la.v_proj.bias.add_(0.2)
    decoder.refresh()
    eager = run(model, model.new_cache(), ids, mask, steps=1)
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True, **{model._cache_kwarg(): cache})
    step = decoder.step(eager[0].argmax(-1, keepdim=True))
    assert (step - eager[1]).abs().max().item() <= TOL


@pytest.mark.parametrize("slots", [256, 8192])
def test_decode_attention_equals_sdpa(slots):
    gen = torch.Generator().manual_seed(0)
    B, Hq, Hkv, D = 2, 4, 2, 16
    q = torch.randn(B, Hq, 1, D, generator=gen)
    keys, values = torch.randn(2, B, Hkv, slots, D, generator=gen).unbind(0)
    visible = torch.rand(B, slots, generator=gen) > 0.3
    block = attention_block(slots)
    assert slots // block <= 512 and slots % block == 0 and (block < slots) == (slots > 4096)
    out = decode_attention(q, keys, values, visible, D**-0.5, block)
    ref = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None], enable_gqa=True)
    assert (out - ref.transpose(1, 2)).abs().max().item() <= TOL


def test_cpu_generate_defaults_to_the_eager_path(monkeypatch):
    model = student("qwen3", hh.LAConfig())
    ids, mask = left_padded()

    def refuse(*args, **kwargs):
        raise AssertionError("no fast decoder on CPU unless asked")

    monkeypatch.setattr(fast_decode, "FastDecoder", refuse)
    model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=PAD_ID)


def test_generate_sizes_its_static_cache_for_prompt_and_new_tokens():
    model = student("qwen3", hh.LAConfig())
    ids = torch.ones(2, 1500, dtype=torch.long)
    cache = fast_decode.fast_generation_cache(model, (ids,), {"max_new_tokens": 100}, fast=True)
    assert cache.batch_size == 2 and 1600 <= cache.capacity <= 1.125 * 1600 and cache.decoder.graph is None
    lengths = [fast_decode._coarse_length(n) for n in range(1024, 70000, 37)]
    assert all(1 <= c / n <= 1.125 for c, n in zip(lengths, range(1024, 70000, 37)))
    assert len(set(lengths)) < 60  # few shapes, so few compilations


def test_requests_the_fast_path_cannot_serve_are_refused_clearly():
    model = student("qwen3", hh.LAConfig())
    ids, mask = left_padded()
    with pytest.raises(ValueError, match="num_beams > 1"):
        generate_fast(model, ids, attention_mask=mask, max_new_tokens=2, num_beams=2, pad_token_id=PAD_ID)
    cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + 1)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        FastDecoder(model, cache, graph=True)
    decoder = FastDecoder(model, cache)
    with pytest.raises(ValueError, match="tokens must be"):
        decoder.step(torch.zeros(1, 1, dtype=torch.long))
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True, **{model._cache_kwarg(): cache})
        decoder.step(torch.ones(ids.shape[0], 1, dtype=torch.long))
        cache.advance(cache.capacity - cache.get_seq_length())  # full
        with pytest.raises(ValueError, match="do not fit"):
            decoder.step(torch.ones(ids.shape[0], 1, dtype=torch.long))
    with pytest.raises(TypeError, match="HybridStaticCache"):
        FastDecoder(model, model.new_cache())


def test_a_pad_in_a_served_decode_step_is_refused():
    model = student("qwen3", hh.LAConfig())
    ids, mask = left_padded()
    cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + 1)
    cache.decoder = FastDecoder(model, cache)
    key = {model._cache_kwarg(): cache, "use_cache": True}
    step_mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
    with torch.no_grad(), cache.decoder.serving_generate():
        model(ids, attention_mask=mask, **key)
        with pytest.raises(ValueError, match="marked a pad"):
            model(ids[:, :1], attention_mask=step_mask, **key)


@pytest.mark.slow
def test_compiled_step_equals_the_eager_path():
    """The pointwise pieces under torch.compile (inductor's CPU backend here, Triton on CUDA)."""
    model = student("qwen3", LA_CONFIGS[1])
    ids, mask = left_padded()
    eager = run(model, model.new_cache(), ids, mask, steps=3)
    fast = run_fast(model, ids, mask, steps=3, compile=True)
    assert all((a - b).abs().max().item() <= TOL for a, b in zip(eager, fast))


# --- on a GPU ---------------------------------------------------------------------------------------------------
def _cuda_student(dtype: torch.dtype, la=LA_CONFIGS[1]):
    teacher = tiny_teacher("qwen3", layers=3, heads=8, kv_heads=4, head_dim=64)
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [1], 1: [], 2: [0, 3]})
    return hh.convert(teacher, plan, la_config=la).to("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_generate_equals_eager_greedy_tokens(caplog):
    model = _cuda_student(torch.float32)
    ids, mask = left_padded(lengths=(70, 33, 129))
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=PAD_ID)
    with caplog.at_level(logging.INFO, logger="hydrahead_lit"):
        fast = model.generate(ids, **kw)  # the default on CUDA
    assert "fast path" in caplog.text and "CUDA graph" in caplog.text
    eager = model.generate(ids, fast=False, **kw)
    assert torch.equal(fast, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_equals_the_uncaptured_step(dtype):
    """Teacher-forced: the same tokens into a captured (and compiled) decoder and an eager one."""
    model = _cuda_student(dtype)
    ids, mask = left_padded(lengths=(70, 33, 129))
    ids, mask = ids.cuda(), mask.cuda()
    tokens = torch.randint(1, 97, (ids.shape[0], 20), device="cuda")
    logits = []
    for graph in (True, False):
        cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + tokens.shape[1])
        decoder = FastDecoder(model, cache, graph=graph, compile=graph)
        assert (decoder.graph is not None) == graph
        if graph and fast_decode.select_la_backend(torch.device("cuda"), False) == "fla":
            assert {layer.la_backend for layer in decoder.layers if layer.dims.num_la_heads} == {"fla"}
        with torch.no_grad():
            model(ids, attention_mask=mask, use_cache=True, **{model._cache_kwarg(): cache})
        logits.append(torch.stack([decoder.step(tokens[:, t : t + 1]).float().clone() for t in range(tokens.shape[1])]))
    scale = logits[1].abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (logits[0] - logits[1]).abs().max().item() <= tol * scale
