"""`compile_blocks`: each decoder block `torch.compile`d in place, under activation checkpointing, gives the
eager stage step's loss and gradients (CPU, inductor; the demo teacher's stage-2 student)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from hydrahead_lit.lit.distillation import DistillationModule
from hydrahead_lit.modeling.arch import decoder_layers

ROOT = Path(__file__).resolve().parents[2]
# fp32 on CPU. The compiled blocks fuse elementwise ops and reorder some reductions, so results differ by
# rounding only: 1e-5 relative in norm measured on tiny models; 1e-4 leaves room for other cores.
TOL = 1e-4


def _module(compile_blocks: bool) -> DistillationModule:
    torch.manual_seed(0)
    module = DistillationModule(
        teacher=str(ROOT / "data/demo/teacher"), init_from=None, plan={"method": "manual", "fa_groups": {"1": [0]}},
        activation_checkpointing=True, compile_blocks=compile_blocks,
    )  # fmt: skip
    module.configure_model()
    module.teacher.requires_grad_(False).eval()
    module.student.train()
    return module


def _step(module: DistillationModule, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        loss = module._loss({"input_ids": ids}, "train")
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}


def test_compiled_blocks_give_the_eager_step() -> None:
    eager, compiled = _module(False), _module(True)
    compiled.student.load_state_dict(eager.student.state_dict())  # the same LA initialisation
    assert all(b._compiled_call_impl is not None for b in decoder_layers(compiled.student))
    assert all(b._compiled_call_impl is not None for b in decoder_layers(compiled.teacher))
    assert compiled.student.state_dict().keys() == eager.student.state_dict().keys()  # export is unchanged
    ids = torch.randint(0, eager.student.config.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    (ref_loss, ref_grads), (loss, grads) = _step(eager, ids), _step(compiled, ids)
    assert loss == pytest.approx(ref_loss, rel=TOL)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        err = (g - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-30)
        assert err < TOL, (name, err.item())
