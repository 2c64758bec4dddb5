"""One way to load a teacher from what a user points at: a Hugging Face model directory or a GGUF file.

Every stage, the evaluation and the `hh` API call these, so the same checks (a local path, not a
HydraHead student, a supported family) and the same errors apply whichever form the teacher has.
Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydrahead_lit.modeling.arch import SUPPORTED_MODEL_TYPES
from hydrahead_lit.modeling.student import HYDRAHEAD_CONFIG_KEY
from hydrahead_lit.teachers.gguf import gguf_config, is_gguf, load_gguf_teacher, load_gguf_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def read_model_config(path: str | Path, what: str) -> dict:
    """config.json of a local model directory, or a ValueError saying what is wrong with `path`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{what} path {str(p)!r} does not exist (models are loaded from local directories only)")
    if not (p / "config.json").is_file():
        hint = " or a .gguf file" if what == "teacher" else ""
        raise ValueError(f"{what} path {str(p)!r} is not a Hugging Face model directory (no config.json){hint}")
    try:
        return json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} config {p / 'config.json'} is not valid JSON: {e}") from e


def teacher_config(path: str | Path) -> Any:
    """The teacher's `transformers` config; ValueError if it is a student or an unsupported family."""
    if is_gguf(path):
        return gguf_config(path)
    raw = read_model_config(path, "teacher")
    if HYDRAHEAD_CONFIG_KEY in raw:
        raise ValueError(f"teacher path {path} holds a HydraHead student; point `teacher` at the original model")
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"teacher {path} has model_type {raw.get('model_type')!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def teacher_config_dict(path: str | Path) -> dict[str, Any]:
    """The teacher's config as the dict a `config.json` holds (a GGUF's is derived from its metadata)."""
    return teacher_config(path).to_dict()


def load_teacher(path: str | Path, dtype: str | torch.dtype = "float32") -> nn.Module:
    """The frozen teacher (eval mode, no gradients) from a local model directory or a GGUF file."""
    teacher_config(path)
    if is_gguf(path):
        model = load_gguf_teacher(path, torch_dtype(dtype))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype(dtype))
    model.requires_grad_(False)
    return model.eval()


def has_tokenizer(path: str | Path) -> bool:
    """True when `path` is a GGUF file (it always describes its tokenizer) or a directory with tokenizer files."""
    if is_gguf(path):
        return True
    p = Path(path).expanduser()
    return p.is_dir() and any((p / name).is_file() for name in TOKENIZER_FILES)


def load_teacher_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a local model or tokenizer directory, or the one a GGUF file describes."""
    if is_gguf(path):
        return load_gguf_tokenizer(path)
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"tokenizer {str(path)!r} is not a local directory nor a .gguf file (nothing is downloaded)")
    if not has_tokenizer(p):
        raise ValueError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {p}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
