"""Tiny models for the evaluation tests: a Qwen3 teacher and a HydraHead student, saved with the demo
tokenizer into a session temp dir (built here, never downloaded; about a second)."""

from __future__ import annotations

import pytest
import torch
import transformers

import hydrahead_lit as hh
from hydrahead_lit.data.demo import demo_tokenizer

MAX_LEN = 320  # small limit so "beyond the limit" is cheap to hit; the suite runs at 160 and 256


def tiny_teacher(tok) -> transformers.PreTrainedModel:
    config = transformers.Qwen3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_LEN, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tok():
    return demo_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tok) -> dict[str, str]:
    """``{"teacher": dir, "student": dir}``; the student keeps KV group 0 of layer 0 only (1 of 4 groups)."""
    root = tmp_path_factory.mktemp("models")
    teacher = tiny_teacher(tok)
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [0], 1: []})
    student = hh.convert(teacher, plan)
    dirs = {"teacher": str(root / "teacher"), "student": str(root / "student")}
    teacher.save_pretrained(dirs["teacher"])
    tok.save_pretrained(dirs["teacher"])
    student.save_pretrained(dirs["student"])  # no tokenizer files: tests pass tokenizer="demo"
    return dirs
