"""The fast activation patching (replayed prefixes, groups batched) against the one-forward-per-group reference."""

from __future__ import annotations

import pytest
import torch
import transformers

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.selection import batch_probes, layer_replay, make_probes, patching_effects
from hydrahead_lit.selection.layer_replay import LayerInputs
from hydrahead_lit.selection.patching import patching_effects_reference

# fp32 on CPU: the fast path runs the same layers on the same inputs, only in batches of other sizes (other
# GEMM blockings), so per-token NLLs differ by float32 rounding (~1e-6); 1e-4 nats on the mean is far below
# the smallest effects the selection ranks (SmolLM2's chosen groups: 5e-3 and up).
NLL_ATOL = 1e-4


def _tiny_twin(arch: str, tok) -> torch.nn.Module:
    kw = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=6,
              num_key_value_heads=3, max_position_embeddings=512, tie_word_embeddings=False)  # fmt: skip
    cls = {"llama": "Llama", "qwen3": "Qwen3", "mistral": "Mistral", "qwen2": "Qwen2"}[arch]
    if arch == "qwen3":
        kw["head_dim"] = 8
    cfg = getattr(transformers, f"{cls}Config")(**kw)
    teacher = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
    return hh.convert(teacher, None, twins=True).eval()


@pytest.fixture(scope="module")
def long_probes(tok):
    # repeated keys (multi-key NIAH holds distractor keys of the same form) and lengths of two sizes
    return make_probes(tok, ["passkey", "niah_single", "niah_multikey"], length=256, count=6, seed=3)


def _assert_same(fast: dict, ref: dict, n_tokens: int) -> None:
    assert torch.allclose(fast["nll"], ref["nll"], atol=NLL_ATOL), (fast["nll"] - ref["nll"]).abs().max()
    # an argmax may flip on a near tie between two batchings: at most one token of all
    assert (fast["accuracy"] - ref["accuracy"]).abs().max() <= 1.0 / n_tokens + 1e-6


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral", "qwen2"])
@pytest.mark.parametrize("max_rows", [1, 8, 64])  # one group per forward, two, all three
def test_fast_patching_matches_the_reference(arch, max_rows, tok, long_probes):
    twin = _tiny_twin(arch, tok)
    batches = batch_probes(long_probes, 4)
    ref = patching_effects_reference(twin, batches)
    fast = patching_effects(twin, batches, max_rows=max_rows)
    assert fast["nll"].shape == (4, 3)
    assert ref["nll"].abs().max() > 1e-3  # untrained twins: the effects are not all zero
    _assert_same(fast, ref, sum(b.num_tokens for b in batches))


def test_fast_patching_on_the_planted_circuit(twin, probes):
    # a structured model: groups that write nothing have zero effect on both paths, the circuit's groups a large one
    ref = patching_effects_reference(twin, probes)
    fast = patching_effects(twin, probes)
    _assert_same(fast, ref, sum(b.num_tokens for b in batch_probes(probes, 8)))
    assert fast["nll"][0, 1].abs() < 1e-5 and fast["accuracy"][1, 1] > 0.1


def test_without_replay_the_groups_still_share_forwards(monkeypatch, tok, long_probes):
    # FSDP2-sharded layers cannot be stood in for: the whole forward runs, still batched by group
    twin = _tiny_twin("llama", tok)
    batches = batch_probes(long_probes, 3)
    ref = patching_effects_reference(twin, batches)
    monkeypatch.setattr("hydrahead_lit.selection.patching.can_replay", lambda model: False)
    _assert_same(patching_effects(twin, batches), ref, sum(b.num_tokens for b in batches))


def test_replay_restores_the_layers_even_after_an_error(tok, long_probes):
    twin = _tiny_twin("llama", tok)
    layers = list(decoder_layers(twin))
    batch = batch_probes(long_probes, 2)[0]
    inputs = LayerInputs(twin)
    with torch.no_grad(), inputs.record():
        base = twin(input_ids=batch.input_ids, use_cache=False).logits
    assert sorted(inputs.inputs) == [0, 1, 2, 3]
    with torch.no_grad(), inputs.replay_from(2):
        replayed = twin(input_ids=batch.input_ids, use_cache=False).logits
    assert torch.equal(replayed, base)  # the same layers 2, 3 on the same inputs
    with pytest.raises(ValueError, match="do not fit"), inputs.replay_from(3):
        twin(input_ids=batch.input_ids[:1], use_cache=False)  # one row, the recorded input has two
    assert list(decoder_layers(twin)) == layers
    with pytest.raises(ValueError, match="layer in 1..3"):
        with inputs.replay_from(0):
            pass
    assert all(not layer._forward_pre_hooks for layer in layers)  # record() removed its hooks


def test_patch_blocks_equal_separate_patches(tok, long_probes):
    twin = _tiny_twin("qwen3", tok)
    ids = batch_probes(long_probes, 2)[0].input_ids
    with torch.no_grad():
        both = twin(input_ids=ids.repeat(2, 1), use_cache=False,
                    attention_probe=AttentionProbe(patch_blocks={1: [[0, 1], [4, 5]]})).logits  # fmt: skip
        first = twin(input_ids=ids, use_cache=False, attention_probe=AttentionProbe(patch={1: [0, 1]})).logits
        second = twin(input_ids=ids, use_cache=False, attention_probe=AttentionProbe(patch={1: [4, 5]})).logits
    assert torch.allclose(both[:2], first, atol=1e-5) and torch.allclose(both[2:], second, atol=1e-5)
    assert not torch.allclose(first, second, atol=1e-3)
    with pytest.raises(ValueError, match="does not split into 3 patch blocks"):
        twin(input_ids=ids.repeat(2, 1), use_cache=False, attention_probe=AttentionProbe(patch_blocks={1: [[0]] * 3}))
    with pytest.raises(ValueError, match="both patch and patch_blocks"):
        AttentionProbe(patch={1: [0]}, patch_blocks={1: [[1]]})


def test_layer_replay_refuses_sharded_models():
    class Sharded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.w.to_local = lambda: self.w  # what a DTensor parameter has

    assert not layer_replay.can_replay(Sharded())
    assert layer_replay.can_replay(torch.nn.Linear(2, 2))
