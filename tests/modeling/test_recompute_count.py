"""Under activation checkpointing a training step runs each decoder block's forward exactly twice (the forward
and one recompute), on the fused Triton path too: a tensor an op keeps outside `save_for_backward` once
made checkpointing recompute every block a second time (three block forwards a step, found in an H200
profile). The fused path needs CUDA, so it is forced here on the CPU through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

import hydrahead_lit as hh
import hydrahead_lit.modeling.attention as attention
import hydrahead_lit.modeling.fused_inputs as fused_inputs
from hydrahead_lit.parallel import enable_activation_checkpointing
from tests.modeling.tiny import tiny_teacher

pytest.importorskip("triton")


@pytest.mark.parametrize("fused", [True, False], ids=["fused_triton", "composed"])
def test_checkpointed_step_runs_each_block_forward_twice(monkeypatch, fused):
    from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton

    if fused:  # the CUDA-only fused path, on the CPU through the interpreter
        monkeypatch.setattr(
            attention.HybridAttention, "_fused_path_applies", lambda self, x, mask, cache, valid, probe: True
        )
        monkeypatch.setattr(
            attention, "hybrid_attention", lambda *a, backend=None, **k: hybrid_attention_triton(*a, **k)
        )
    projections = []
    project = fused_inputs.concat_linear
    monkeypatch.setattr(fused_inputs, "concat_linear", lambda *a, **k: projections.append(1) or project(*a, **k))
    torch.manual_seed(0)
    teacher = tiny_teacher("qwen3", layers=2, heads=4, kv_heads=2, head_dim=16)
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: [0], 1: [1]})).train()
    enable_activation_checkpointing(student)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 70), generator=torch.Generator().manual_seed(0))
    student(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert len(projections) == 2 * teacher.config.num_hidden_layers
