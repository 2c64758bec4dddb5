"""A saved student loads the usual `transformers` way: `AutoModelForCausalLM.from_pretrained(student_dir)`
builds the same model as `hh.load_student` once `hydrahead_lit` is imported, and without it the Auto
classes refuse the directory instead of loading the teacher's architecture with the attention dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

import hydrahead_lit as hh


def _teacher(family: str):
    torch.manual_seed(0)
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256)  # fmt: skip
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**kw)).eval()
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


PLANS = {
    "one group (3:1)": lambda c: hh.HeadPlan.from_fa_groups(c, {0: [1]}),
    "all LA": hh.HeadPlan.all_la,
    "layer-wise": lambda c: hh.HeadPlan.layerwise(c, [1]),
}


@pytest.mark.parametrize("family", ["qwen3", "llama"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_auto_model_loads_the_student(family, plan, tmp_path) -> None:
    teacher = _teacher(family)
    student = hh.convert(teacher, PLANS[plan](teacher.config)).eval()
    student.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == f"hydrahead_{family}"
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(auto) is type(hh.load_student(tmp_path)) and hh.is_student(auto)
    assert auto.head_plan.fa_groups == student.head_plan.fa_groups
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, student(ids).logits, rtol=0, atol=0)
    assert AutoConfig.from_pretrained(tmp_path).model_type == family  # what the family's code reads


def test_twins_and_generation_through_auto(tmp_path) -> None:
    teacher = _teacher("qwen3")
    twins = hh.convert(teacher, None, twins=True)
    twins.save_pretrained(tmp_path / "twins")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "twins")
    student = hh.convert(loaded, hh.HeadPlan.from_fa_groups(loaded.config, {1: [0]})).eval()
    student.save_pretrained(tmp_path / "student")
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    a = auto.generate(ids, max_new_tokens=6, do_sample=False)
    b = hh.load_student(tmp_path / "student").eval().generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_plain_transformers_refuses_a_student(tmp_path) -> None:
    teacher = _teacher("qwen3")
    hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: [1]})).save_pretrained(tmp_path)
    code = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "hydrahead_qwen3" in result.stderr


def test_a_student_saved_under_the_family_type_still_loads(tmp_path) -> None:
    """Exports written before students had their own model type (`"model_type": "qwen3"`) load with
    `hh.load_student` as before; saving them again gives the new type."""
    teacher = _teacher("qwen3")
    student = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {0: [1]})).eval()
    student.save_pretrained(tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**raw, "model_type": "qwen3"}))
    loaded = hh.load_student(tmp_path / "old").eval()
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, student(ids).logits, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == "hydrahead_qwen3"
