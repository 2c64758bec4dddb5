"""Loading teachers (model directories or GGUF files) and students, with clear errors for bad paths."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from hydrahead_lit.modeling.student import HYDRAHEAD_CONFIG_KEY

# Teachers (a model directory or a GGUF file) load through one module; these names stay importable here.
from hydrahead_lit.teachers import (
    has_tokenizer,
    load_teacher,
    load_teacher_tokenizer,
    read_model_config,
    teacher_config,
    torch_dtype,
)

__all__ = ["load_student", "load_teacher", "read_model_config", "save_tokenizer", "student_spec", "teacher_config",
           "torch_dtype"]  # fmt: skip


def student_spec(path: str | Path) -> dict:
    """The `hydrahead` entry of a saved student's config (ValueError if `path` is not a student)."""
    raw = read_model_config(path, "init_from")
    spec = raw.get(HYDRAHEAD_CONFIG_KEY)
    if spec is None:
        raise ValueError(f"init_from {path} holds a plain model, not a HydraHead student (no 'hydrahead' entry)")
    return spec


def load_student(path: str | Path, dtype: str = "float32") -> nn.Module:
    import hydrahead_lit as hh

    student_spec(path)
    return hh.load_student(path, dtype=torch_dtype(dtype))


def save_tokenizer(source: str | Path | None, out_dir: str | Path) -> bool:
    """Copy the tokenizer of a local model directory (or "demo") next to an export; False if none."""
    if source is None:
        return False
    if str(source) == "demo":
        from hydrahead_lit.data.demo import demo_tokenizer

        demo_tokenizer().save_pretrained(str(out_dir))
        return True
    if not has_tokenizer(source):
        return False
    load_teacher_tokenizer(source).save_pretrained(str(out_dir))
    return True
