"""Every Triton kernel the hybrid op and the packed gated delta rule launch compiles for Hopper (sm_90), checked
without a GPU.

The interpreter tests run the kernels' Python; this runs Triton's compiler on the same launches
(`sm90_compile.py`: recorded under the interpreter, compiled in a second process without it). It caught
a module-level constant that the interpreter accepted and the compiler refuses (it must be a
`tl.constexpr`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia.compiler")

SCRIPT = Path(__file__).with_name("sm90_compile.py")
KERNELS = {
    "gdn_fwd_prep_kernel", "gdn_fwd_state_kernel", "gdn_fwd_out_kernel", "fusion_norm_bwd_kernel",
    "gdn_bwd_du_local_kernel", "gdn_bwd_state_kernel", "gdn_bwd_intra_kernel", "gdn_bwd_wy_kernel",
}  # fmt: skip


def _run(step: str, launches: Path, interpret: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": interpret}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), step, str(launches)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_every_launched_kernel_compiles_for_sm90(tmp_path):
    launches = tmp_path / "launches.json"
    _run("record", launches, "1")
    compiled = _run("compile", launches, "0")
    names = {line.split()[0] for line in compiled.splitlines() if line.strip()}
    assert names == KERNELS, compiled
