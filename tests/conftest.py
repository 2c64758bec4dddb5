import os

import pytest
import torch

# Small, deterministic CPU runs: 2 cores in CI.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
