"""FSDP2 on 2 CPU processes: a tiny stage-2 fit saves a sharded checkpoint, resumes from it, exports
a consolidated Hugging Face student."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import hydrahead_lit as hh

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fsdp_fit.py")


# A peer vanishing from gloo's TCP transport: seen once in CI on a loaded 2-core machine, at the export's
# all-gather after training had finished, and not reproduced since (idle or with both cores busy).
TRANSPORT_ERROR = "gloo/transport/tcp"


def _report(proc: subprocess.CompletedProcess) -> str:
    """The output's tail, and every line rank 1 printed (its traceback is otherwise cut off by rank 0's)."""
    rank1 = [line for line in proc.stderr.splitlines() if line.startswith("[rank1]")]
    tail = proc.stdout[-2000:] + proc.stderr[-5000:]
    return f"exit {proc.returncode}\n{tail}\nrank 1:\n" + "\n".join(rank1[-60:])


def _run(*args: str) -> None:
    """Run fsdp_fit.py; once more if the first try lost a peer in gloo's transport (both outputs reported)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    reports = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        if proc.returncode == 0:
            return
        reports.append(_report(proc))
        if TRANSPORT_ERROR not in proc.stderr:
            break
    raise AssertionError("\n\n---- next try ----\n".join(reports))


def test_fsdp2_fit_save_resume_export(teacher_dir, twin_dir, tmp_path) -> None:
    out = tmp_path / "run"
    _run(str(teacher_dir), str(twin_dir), str(out), "2")
    ckpt = out / "ckpt" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file()  # a DCP (sharded) checkpoint directory
    assert len(list(ckpt.glob("*.distcp"))) == 2
    first = json.loads((out / "result_2.json").read_text())
    assert {k: first[k] for k in ("global_step", "dtensor")} == {"global_step": 2, "dtensor": True}
    exported_2 = hh.load_student(out / "student").state_dict()

    # Resume from a copy: the resumed run saves its step-4 checkpoint over last.ckpt, and a retry must start at step 2.
    step_2 = shutil.copytree(ckpt, out / "step_2.ckpt")
    _run(str(teacher_dir), str(twin_dir), str(out), "4", str(step_2))
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


def test_fsdp2_fit_with_compiled_blocks(teacher_dir, twin_dir, tmp_path) -> None:
    """`compile_blocks` under FSDP2 (checkpointing, then compile, then `fully_shard` per block, as torchtitan
    orders them): two steps train with compiled graphs, the parameters stay sharded, and the loss after them
    equals the eager run's within 1e-4 relative (float32 on CPU; measured 3e-6: the compiled kernels reorder
    additions)."""
    runs = {}
    for mode, extra in (("eager", ()), ("compiled", ("--compile-blocks",))):
        out = tmp_path / mode
        _run(str(teacher_dir), str(twin_dir), str(out), "2", *extra)
        runs[mode] = json.loads((out / "result_2.json").read_text())
    assert runs["compiled"]["global_step"] == 2 and runs["compiled"]["dtensor"]
    assert runs["compiled"]["compiled_graphs"] > 0 and runs["eager"]["compiled_graphs"] == 0
    eager, compiled = runs["eager"]["loss"], runs["compiled"]["loss"]
    assert abs(compiled - eager) <= 1e-4 * abs(eager), runs
