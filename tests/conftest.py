import os

import pytest
import torch

# Triton kernels run on CPU through Triton's interpreter. The variable must be set before any module
# decorates a @triton.jit function (fla and transformers import Triton early), hence here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small, deterministic CPU runs: 2 cores in CI.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
