"""Head selection under FSDP2 on 2 CPU processes: same forwards on every rank, one decision, one file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hydrahead_lit.selection import group_scores, make_probes, patching_effects, retrieval_scores

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fsdp_select.py")


def test_selection_under_fsdp2(tmp_path, twin, tok) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["dtensor"] and ranks[1]["dtensor"]  # the scores really ran on sharded parameters
    assert ranks[0] == ranks[1]
    record = json.loads((tmp_path / "sel.json").read_text())
    assert record["chosen"] == ranks[0]["chosen"] == [[1, 1]]
    # Same probes, same (FA) weights: the sharded retrieval scores equal the single-process ones. FA weights
    # are frozen in the fit, so only float rounding can differ.
    probes = make_probes(tok, ["passkey", "niah_single"], length=128, count=2, seed=0)
    expected = group_scores(retrieval_scores(twin, probes), 2)
    assert torch.allclose(torch.tensor(record["scores"]["retrieval"]), expected, atol=1e-6)
    assert torch.tensor(record["scores"]["patching"]).shape == patching_effects(twin, probes)["nll"].shape
