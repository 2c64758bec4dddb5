"""The hybrid cache holds exactly the bytes it reports: FA keys/values, LA recurrent and conv states."""

import pytest
import torch
from torch import Tensor

import hydrahead_lit as hh
from hydrahead_lit.modeling.cache import HybridCache
from tests.modeling.tiny import random_ids, tiny_teacher


def _held_tensors(cache: HybridCache) -> list[Tensor]:
    held = []
    for layer in cache.layers:
        held += [t for t in layer.la_state.values() if t is not None]
        held += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, Tensor)]
    return held


@pytest.mark.parametrize("short_conv", [0, 4])
def test_nbytes_equals_the_storage_the_cache_holds(short_conv):
    teacher = tiny_teacher("qwen2")
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [1], 1: []})
    student = hh.convert(teacher, plan, la_config=hh.LAConfig(short_conv=short_conv))
    B, T_prefill, n_decode = 2, 64, 3
    ids = random_ids(batch=B, length=T_prefill + n_decode)
    cache = student.new_cache()
    kw = {student._cache_kwarg(): cache, "use_cache": True}
    with torch.no_grad():
        student(ids[:, :T_prefill], **kw)
        for t in range(T_prefill, T_prefill + n_decode):
            student(ids[:, t : t + 1], **kw)
    held = _held_tensors(cache)
    # Every stored tensor owns a storage of exactly its own size (a view of a prefill buffer would not) ...
    for t in held:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    # ... no two share one, and nbytes() (and the formula) count exactly those bytes.
    assert len({t.untyped_storage().data_ptr() for t in held}) == len(held)
    assert cache.nbytes() == sum(t.untyped_storage().nbytes() for t in held)
    assert cache.nbytes() == student.cache_bytes(B, T_prefill + n_decode, torch.float32)["total"]
    if short_conv:
        conv = cache.layers[1].la_state["conv"]
        assert conv.shape[-1] == short_conv - 1
