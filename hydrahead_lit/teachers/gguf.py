"""Teachers stored as one GGUF file (llama.cpp's format, often quantized).

`transformers` reads a GGUF with `from_pretrained(dir, gguf_file=name)` and dequantizes every tensor to
the requested float type; the `gguf` and `accelerate` packages must be installed. The model it returns
carries a GGUF quantizer that refuses `save_pretrained`, so the teacher used here is a plain model of
the same class built from the file's config, holding the very same (dequantized) tensors: it computes
exactly what the GGUF-loaded model computes, and it saves, converts and shards like any other teacher.

Architectures are checked from the file's metadata before any tensor is read, so an unsupported file
fails in a second. Nothing is fetched from a network.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydrahead_lit.modeling.arch import SUPPORTED_MODEL_TYPES

GGUF_SUFFIX = ".gguf"
_MAGIC = b"GGUF"
# llama.cpp's `general.architecture` values whose models are of a supported family. Mistral models are
# usually written as "llama" (transformers then reads them as mistral when the file's name says so).
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def is_gguf(path: str | Path) -> bool:
    """True when `path` names a GGUF file (by its `.gguf` suffix; the file itself is checked on use)."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() == GGUF_SUFFIX


def _require_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"reading a GGUF teacher needs the {' and '.join(missing)} package(s): "
                          f"pip install {' '.join(missing)}")  # fmt: skip


def check_gguf_file(path: str | Path) -> Path:
    """The resolved path of an existing GGUF file, or a ValueError saying what is wrong with it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"GGUF file {str(p)!r} does not exist (teachers are read from local files only)")
    if not p.is_file():
        raise ValueError(f"{str(p)!r} ends in .gguf but is not a file; pass the GGUF file itself")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise ValueError(f"{p} is not a GGUF file (it starts with {magic!r}, not {_MAGIC!r})")
    return p.resolve()


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """What the file says of itself, from its header only: architecture, name, tensor count and types."""
    p = check_gguf_file(path)
    stat = p.stat()
    return dict(_read_metadata(p, stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=8)  # keyed on size and mtime too: a file replaced in place is read again
def _read_metadata(p: Path, size: int, mtime_ns: int) -> dict[str, Any]:
    _require_packages()
    from gguf import GGUFReader

    reader = GGUFReader(str(p))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    return {
        "file": p.name,
        "bytes": size,
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "tensors": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
    }


def check_gguf_architecture(path: str | Path) -> dict[str, Any]:
    """The file's metadata; ValueError naming the architecture when it is not one HydraHead converts."""
    meta = gguf_metadata(path)
    arch = meta["architecture"]
    if arch is None:
        raise ValueError(f"{path} has no general.architecture entry; it does not describe a model")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"{path} holds a {arch!r} model (GGUF general.architecture); HydraHead converts decoders with q/k/v/o "
            f"attention and rotary embeddings of the families {', '.join(SUPPORTED_MODEL_TYPES)} "
            f"(GGUF architectures {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    return meta


def gguf_config(path: str | Path) -> Any:
    """The `transformers` config the GGUF file describes; ValueError for an unsupported family."""
    check_gguf_architecture(path)
    p = check_gguf_file(path)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{p} is read by transformers as model_type {config.model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")  # fmt: skip
    return config


def _plain_model(src: nn.Module, config: Any, dtype: torch.dtype) -> nn.Module:
    """A model of `src`'s class built from `config` without the GGUF quantizer, sharing `src`'s tensors."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # no memory and no random init for weights that are replaced next
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(src.state_dict(), strict=True, assign=True)
    # Non-persistent buffers (the rotary inverse frequencies) are not in a state dict: take them over too.
    src_buffers = dict(src.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = src_buffers[name]
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the GGUF model left tensors unset: {left[:5]}")
    model.generation_config = src.generation_config
    return model


def load_gguf_teacher(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The teacher a GGUF file holds, dequantized to `dtype`, as a plain `transformers` model (eval mode)."""
    config = gguf_config(path)
    p = check_gguf_file(path)
    import transformers

    kwargs: dict[str, Any] = {}
    # Dequantized on load, always: packed-weight kernels (where installed) would leave tensors no plain model
    # holds. Versions of transformers without GgufConfig always dequantize.
    if hasattr(transformers, "GgufConfig"):
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    src = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype,
                                                            local_files_only=True, **kwargs)  # fmt: skip
    return _plain_model(src, config, dtype).eval()


def load_gguf_tokenizer(path: str | Path) -> Any:
    """The tokenizer a GGUF file describes (its vocabulary, merges and special tokens are metadata)."""
    check_gguf_architecture(path)
    p = check_gguf_file(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
