"""Loading teachers and students from local directories, with clear errors for bad paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydrahead_lit.modeling.arch import SUPPORTED_MODEL_TYPES
from hydrahead_lit.modeling.student import HYDRAHEAD_CONFIG_KEY

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def read_model_config(path: str | Path, what: str) -> dict:
    """config.json of a local model directory, or a ValueError saying what is wrong with `path`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{what} path {str(p)!r} does not exist (models are loaded from local directories only)")
    if not (p / "config.json").is_file():
        raise ValueError(f"{what} path {str(p)!r} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} config {p / 'config.json'} is not valid JSON: {e}") from e


def teacher_config(path: str | Path) -> Any:
    """The teacher's `transformers` config; ValueError if it is a student or an unsupported family."""
    raw = read_model_config(path, "teacher")
    if HYDRAHEAD_CONFIG_KEY in raw:
        raise ValueError(f"teacher path {path} holds a HydraHead student; point `teacher` at the original model")
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"teacher {path} has model_type {raw.get('model_type')!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def load_teacher(path: str | Path, dtype: str = "float32") -> nn.Module:
    """The frozen teacher (eval mode, no gradients) from a local directory."""
    teacher_config(path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype(dtype))
    model.requires_grad_(False)
    return model.eval()


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
    p = Path(source)
    if not any((p / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return False
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(p), local_files_only=True).save_pretrained(str(out_dir))
    return True
