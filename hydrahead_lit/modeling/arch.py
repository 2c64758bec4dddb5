"""Which `transformers` decoders can be converted, and a clear error for the others."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

# Decoders whose attention is q/k/v/o projections + RoPE (+ optional per-head q/k RMSNorm), with the
# rotary embedding computed once in the model and handed to each layer as `position_embeddings`.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_REQUIRED_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (`model.model.layers` in the supported families)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no `model.layers` list of decoder blocks; "
            f"HydraHead converts causal LMs of the families {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return layers


def check_supported(model: nn.Module) -> None:
    """Raise a ValueError naming what is missing if `model` cannot be converted."""
    config: Any = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} ({type(model).__name__}) is not supported: HydraHead converts decoders "
            f"with q/k/v/o attention and rotary embeddings of the families {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            raise ValueError(f"{type(model).__name__}: decoder layer {i} has no `self_attn` module")
        missing = [name for name in _REQUIRED_ATTN if not isinstance(getattr(attn, name, None), nn.Linear)]
        if missing:
            raise ValueError(
                f"{type(model).__name__}: layer {i} attention ({type(attn).__name__}) has no {', '.join(missing)} "
                "linear projection(s); HydraHead needs separate q_proj, k_proj, v_proj and o_proj"
            )
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__} has no `model.rotary_emb`: rotary position embeddings are required")


def resolve_fa_implementation(model: nn.Module, requested: str = "auto") -> str:
    """The attention implementation for FA heads: flash-attn when importable on CUDA, else the teacher's.

    "auto" keeps the teacher's implementation (SDPA by default; eager when the teacher asked for it) unless
    flash-attn is installed and the model is on a CUDA device in half precision.
    """
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if requested != "auto":
        return requested
    param = next(model.parameters())
    if (
        current == "sdpa"
        and param.is_cuda
        and param.dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return current
