"""The static hybrid cache: same logits as the dynamic cache (fp32, 1e-5), in-place writes, exact bytes."""

import pytest
import torch
from torch import Tensor

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.static_cache import SLOT_MULTIPLE, HybridStaticCache
from tests.modeling.tiny import ARCHS, random_ids, tiny_teacher

TOL = 1e-5
LA_CONFIGS = [hh.LAConfig(), hh.LAConfig(short_conv=4, output_gate=True)]
LA_IDS = ["default", "conv_gate"]
# Three kinds of layer: one FA group + LA heads, LA heads only, FA heads only.
MIXED = {0: [1], 1: [], 2: [0, 1]}


def student(arch: str, la: hh.LAConfig, groups: dict | None = None, seed: int = 1):
    teacher = tiny_teacher(arch, layers=3)
    model = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, groups or MIXED), la_config=la)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # input-dependent gates, a real conv and output gate
        for layer in decoder_layers(model):
            heads = layer.self_attn.la
            if heads is None:
                continue
            for p in (heads.a_proj.weight, heads.b_proj.weight):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            if heads.conv is not None:
                heads.conv.add_(0.3 * torch.randn(heads.conv.shape, generator=gen))
            if heads.g_proj is not None:
                heads.g_proj.weight.copy_(0.1 * torch.randn(heads.g_proj.weight.shape, generator=gen))
    return model


def left_padded(lengths=(9, 4, 12), seed: int = 10) -> tuple[Tensor, Tensor]:
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = random_ids(1, n, seed=seed + i)[0].clamp_min(1)
        mask[i, T - n :] = 1
    return ids, mask


def run(model, cache, ids: Tensor, mask: Tensor | None, steps: int) -> list[Tensor]:
    """Prefill then greedy single-token steps through the model's forward; the logits of every call."""
    key = {model._cache_kwarg(): cache, "use_cache": True}
    out = []
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, **key).logits[:, -1]
        out.append(logits)
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = model(token, attention_mask=mask, **key).logits[:, -1]
            out.append(logits)
    return out


@pytest.mark.parametrize("la", LA_CONFIGS, ids=LA_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_logits_equal_the_dynamic_cache(arch, la):
    model = student(arch, la)
    ids, mask = left_padded()
    dynamic = run(model, model.new_cache(), ids, mask, steps=4)
    static = run(model, HybridStaticCache(model, ids.shape[0], ids.shape[1] + 4), ids, mask, steps=4)
    for step, (a, b) in enumerate(zip(dynamic, static)):
        assert (a - b).abs().max().item() <= TOL, f"call {step}"


def test_generate_with_a_static_cache_equals_the_dynamic_cache():
    model = student("qwen2", LA_CONFIGS[1])
    ids, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    dyn = model.generate(ids, fast=False, **kw)
    cache = HybridStaticCache(model, ids.shape[0], ids.shape[1] + 5)
    static = model.generate(ids, fast=False, **{model._cache_kwarg(): cache}, **kw)
    assert torch.equal(dyn, static)
    assert cache.get_seq_length() == ids.shape[1] + 4  # the last token is generated, not fed


def _storages(cache: HybridStaticCache) -> list[tuple[int, int]]:
    return [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in cache.tensors()]


@pytest.mark.parametrize("short_conv", [0, 4])
def test_nbytes_is_exact_and_every_write_is_in_place(short_conv):
    model = student("qwen3", hh.LAConfig(short_conv=short_conv))
    B, max_len = 3, 21
    cache = HybridStaticCache(model, B, max_len)
    assert cache.capacity == SLOT_MULTIPLE and cache.get_max_length() == SLOT_MULTIPLE
    before = _storages(cache)
    ids, mask = left_padded()
    run(model, cache, ids, mask, steps=3)
    held = cache.tensors()
    assert _storages(cache) == before  # nothing reallocated: every write went into the first allocation
    assert len({t.untyped_storage().data_ptr() for t in held}) == len(held)  # no two share a storage
    for t in held:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert cache.nbytes() == sum(t.untyped_storage().nbytes() for t in held)
    # The same bytes from the shapes: FA groups' keys/values over the capacity, LA states, the slot mask.
    analytic = model.cache_bytes(B, cache.capacity, torch.float32)["total"] + B * cache.capacity
    assert cache.nbytes() == analytic
    assert cache.kv_nbytes() + cache.la_nbytes() + B * cache.capacity == cache.nbytes()
    # Slots of left pads are marked; every other written slot is real.
    assert torch.equal(cache.slot_valid[:, : ids.shape[1]], mask.bool())
    assert cache.slot_valid[:, ids.shape[1] :].all()


def test_a_layer_without_fa_groups_holds_no_keys():
    model = student("llama", hh.LAConfig())
    cache = HybridStaticCache(model, 1, 8)
    assert cache.layers[1].keys is None and cache.layers[1].la_state["recurrent"] is not None
    assert cache.layers[2].la_state["recurrent"] is None and cache.layers[2].keys.shape == (1, 2, SLOT_MULTIPLE, 24)


def test_reset_empties_the_cache_in_place():
    model = student("qwen3", LA_CONFIGS[1])
    ids, mask = left_padded()
    cache = HybridStaticCache(model, ids.shape[0], 20)
    first = run(model, cache, ids, mask, steps=2)
    before = _storages(cache)
    cache.reset()
    assert cache.get_seq_length() == 0 and all(not t.any() for t in cache.tensors()[:-1])
    again = run(model, cache, ids, mask, steps=2)
    assert _storages(cache) == before
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_bad_uses_get_clear_errors():
    model = student("qwen3", hh.LAConfig())
    cache = HybridStaticCache(model, 2, 4)
    ids = random_ids(2, cache.capacity + 1)
    with pytest.raises(ValueError, match="allocate it for the prompt plus every token"):
        run(model, cache, ids, None, steps=0)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(3)
    with pytest.raises(ValueError, match="fixed batch size"):
        cache.batch_repeat_interleave(2)
    with pytest.raises(ValueError, match="must be >= 1"):
        HybridStaticCache(model, 0, 4)
    with pytest.raises(ValueError, match="not a HydraHead student"):
        HybridStaticCache(tiny_teacher("qwen3"), 1, 4)
    twins = hh.convert(tiny_teacher("qwen3"), None, twins=True)
    with pytest.raises(ValueError, match="twin"):
        HybridStaticCache(twins, 1, 4)


def test_transformers_keeps_the_2d_mask_for_this_cache():
    """A compileable cache would make generate() build a 4-D mask, which LA heads refuse (they need pads)."""
    model = student("qwen3", hh.LAConfig())
    cache = HybridStaticCache(model, 1, 4)
    assert not cache.is_compileable
    assert cache.get_seq_length() == 0 and cache.get_mask_sizes(5, 0) == (5, 0)


def test_a_prefilled_dynamic_cache_loads_into_rows():
    """Row-by-row prefill (the benchmark's, for long prompts in a batch): each row continues as it would."""
    model = student("qwen2", LA_CONFIGS[1])
    ids = random_ids(2, 10, seed=3)
    key = model._cache_kwarg()
    static = HybridStaticCache(model, 2, 16)
    nxt = torch.tensor([[5], [7]])
    with torch.no_grad():
        expect = []
        for r in range(2):
            dynamic = model.new_cache()
            model(ids[r : r + 1], use_cache=True, **{key: dynamic})
            static.load(dynamic, slice(r, r + 1))
            expect.append(model(nxt[r : r + 1], use_cache=True, **{key: dynamic}).logits[0, -1])
        assert static.get_seq_length() == 10 and static.slot_valid[:, :10].all()
        got = model(nxt, use_cache=True, **{key: static}).logits[:, -1]
    assert (got - torch.stack(expect)).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="same number of tokens"):
        shorter = model.new_cache()
        with torch.no_grad():
            model(ids[:1, :4], use_cache=True, **{key: shorter})
        static.load(shorter, slice(0, 1))
