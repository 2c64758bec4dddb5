"""Load a model to evaluate: a HydraHead student saved by this project or a local Hugging Face teacher
(a model directory, or a GGUF file read through `hydrahead_lit.teachers`).

Both are directories written by ``save_pretrained``; a ``hydrahead`` entry in ``config.json`` marks a
student. Nothing is downloaded. Checks that need only ``config.json`` (the path, the length limit)
run before any weights are read, so bad input fails in a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydrahead_lit.modeling.student import HYDRAHEAD_CONFIG_KEY
from hydrahead_lit.teachers import is_gguf, load_teacher, load_teacher_tokenizer, teacher_config_dict

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a saved model directory; ValueError naming what is wrong otherwise."""
    if is_gguf(path):  # a teacher in one GGUF file: its config comes from the file's metadata
        return teacher_config_dict(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; pass a directory written by save_pretrained "
                         "(a HydraHead student or a Hugging Face teacher)")  # fmt: skip
    if not p.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a file; pass the model directory (with config.json and "
                         "weights), e.g. out/stage3/student")  # fmt: skip
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{p} is not a saved model directory (no config.json)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg} is not valid JSON ({e})") from e


def model_kind(config: dict[str, Any]) -> str:
    """``"student"`` for a HydraHead student config, else ``"teacher"``."""
    return "student" if config.get(HYDRAHEAD_CONFIG_KEY) else "teacher"


def max_length(config: dict[str, Any]) -> int:
    """The longest context the model supports (``max_position_embeddings``)."""
    text = config.get("text_config", config)  # multimodal configs nest the LM's config
    limit = text.get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0:
        raise ValueError("config.json has no positive max_position_embeddings; the context limit is unknown")
    return limit


def check_lengths(lengths: list[int], limit: int) -> None:
    """ValueError unless every length is a positive int within ``limit``."""
    if not lengths:
        raise ValueError("lengths is empty; give at least one context length")
    bad = [n for n in lengths if not isinstance(n, int) or n <= 0]
    if bad:
        raise ValueError(f"context lengths must be positive integers, got {bad}")
    over = [n for n in lengths if n > limit]
    if over:
        raise ValueError(f"context length(s) {over} exceed the model's limit of {limit} tokens "
                         "(max_position_embeddings); drop them from `lengths`")  # fmt: skip


def load_tokenizer(path: str | Path, tokenizer: Any = None) -> Any:
    """The tokenizer from ``tokenizer`` (a directory, ``"demo"`` for the bundled one, or a tokenizer
    object, returned as is) or else from the model directory ``path``."""
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    if tokenizer == "demo":
        from hydrahead_lit.data.demo import demo_tokenizer

        return demo_tokenizer()
    if is_gguf(tokenizer or path):  # a GGUF file describes its tokenizer
        return load_teacher_tokenizer(tokenizer or path)
    src = Path(tokenizer).expanduser() if tokenizer else Path(path).expanduser()
    if not src.is_dir():
        raise ValueError(f"tokenizer {str(src)!r} is not a directory; pass a local tokenizer directory or 'demo'")
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((src / f).is_file() for f in files):
        hint = "" if tokenizer else " (the model directory holds none; pass `tokenizer: <dir>` or `tokenizer: demo`)"
        raise ValueError(f"no tokenizer files in {src}{hint}")
    return AutoTokenizer.from_pretrained(str(src), local_files_only=True)


def load_model(
    path: str | Path, tokenizer: Any = None, dtype: str = "float32", device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, kind)`` for a saved student or teacher directory; the model is in eval mode."""
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    config = read_config(path)
    kind = model_kind(config)
    tok = load_tokenizer(path, tokenizer)
    if kind == "student":
        from hydrahead_lit.modeling.student import load_student

        if config[HYDRAHEAD_CONFIG_KEY].get("twins"):
            raise ValueError(f"{path} is a stage-1 twin model; evaluate the stage-2/3 student built from it")
        model = load_student(path, dtype=_DTYPES[dtype])
    elif is_gguf(path):
        model = load_teacher(path, dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype], local_files_only=True)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's embedding only {vocab}; "
                         "pass the tokenizer the model was trained with")  # fmt: skip
    return model.to(device).eval(), tok, kind
