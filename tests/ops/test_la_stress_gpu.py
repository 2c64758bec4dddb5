"""The stressed input family on the GPU, bf16 at real shapes: the project's Triton op (and fla, for
comparison) against the float64 reference. Tolerance and its reasons: ``benchmarks/check_la_stress.py``."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_gated_delta_rule_on_stressed_inputs_bf16() -> None:
    from benchmarks.check_la_stress import check

    _, failures = check(B=2, T=1000, H=2, D=128)
    assert not failures, failures
