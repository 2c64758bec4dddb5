"""FSDP2 on 2 CPU processes: a tiny stage-2 fit saves a sharded checkpoint, resumes from it, exports
a consolidated Hugging Face student."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import hydrahead_lit as hh

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fsdp_fit.py")


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_fsdp2_fit_save_resume_export(teacher_dir, twin_dir, tmp_path) -> None:
    out = tmp_path / "run"
    _run(str(teacher_dir), str(twin_dir), str(out), "2")
    ckpt = out / "ckpt" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file()  # a DCP (sharded) checkpoint directory
    assert len(list(ckpt.glob("*.distcp"))) == 2
    first = json.loads((out / "result_2.json").read_text())
    assert first == {"global_step": 2, "dtensor": True}
    exported_2 = hh.load_student(out / "student").state_dict()

    _run(str(teacher_dir), str(twin_dir), str(out), "4", str(ckpt))
    assert json.loads((out / "result_4.json").read_text())["global_step"] == 4  # resumed at step 2, not 0
    student = hh.load_student(out / "student")
    assert student.head_plan.fa_groups == ((), (0,))
    state = student.state_dict()
    assert set(state) == set(exported_2)
    # Two more steps moved the weights, the root's too (lm_head is used outside the FSDP forward).
    for key in ("lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.la.q_proj.weight"):
        assert not torch.equal(state[key], exported_2[key]), key
    # The export is a working model: the teacher's tokenizer-free tiny vocabulary, greedy decoding.
    out_ids = student.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out_ids.shape == (1, 6)
