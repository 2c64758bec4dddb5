"""Efficiency per context length: cache bytes (measured and analytic), prefill time, decode speed.

Prompts are random token ids (the cost does not depend on the text). Each repeat prefills a fresh
cache, because a recurrent LA state cannot be rewound, then decodes greedily one token at a time;
times are medians over repeats, with CUDA synchronised around each timed region.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from hydrahead_lit.modeling.student import is_student


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_nbytes(cache: Any) -> int:
    """Bytes held by a generation cache: the hybrid cache's own count, else every layer's keys/values."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()
    return total


def teacher_kv_bytes(config: Any, batch: int, seq_len: int, dtype: torch.dtype) -> int:
    """Analytic KV bytes of a standard full-attention cache."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    el = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * seq_len * batch * el


def _forward_params(model: nn.Module) -> set[str]:
    """Named parameters of the model's forward (a student's own forward only forwards **kwargs)."""
    for cls in type(model).__mro__:
        fn = cls.__dict__.get("forward")
        if fn is not None:
            names = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
            if len(names) > 1:
                return names
    return set()


def _cache_kwarg(model: nn.Module) -> str:
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


@torch.inference_mode()
def measure_length(
    model: nn.Module, length: int, decode_tokens: int = 16, repeats: int = 3, seed: int = 0
) -> dict[str, float | int]:
    """Figures for one prompt of ``length`` tokens (batch 1)."""
    if length < 1 or decode_tokens < 1 or repeats < 1:
        raise ValueError(f"need length, decode_tokens, repeats >= 1 (got {length}, {decode_tokens}, {repeats})")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen, device="cpu").to(device)
    key = _cache_kwarg(model)
    # Prefill computes logits for the last position only, as generate() does (full logits at 128K
    # tokens and a 150K vocabulary would dominate time and memory).
    last = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    prefill, decode, nbytes = [], [], 0
    # One untimed pass first: kernel compilation, autotuning and allocator growth are not steady state.
    warm = model(input_ids=ids, use_cache=True, **last)
    model(input_ids=warm.logits[:, -1:].argmax(-1), use_cache=True, **{key: _output_cache(warm)})
    del warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **last)
        _sync(device)
        prefill.append(time.perf_counter() - t0)
        cache = _output_cache(out)
        nbytes = cache_nbytes(cache)
        token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token, use_cache=True, **{key: cache})
            token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        decode.append(time.perf_counter() - t0)
        del out, cache
    result: dict[str, float | int] = {
        "cache_bytes": nbytes,
        "teacher_kv_bytes": teacher_kv_bytes(model.config, 1, length, dtype),
        "prefill_s": statistics.median(prefill),
        "prefill_tokens_per_s": length / statistics.median(prefill),
        "decode_tokens_per_s": decode_tokens / statistics.median(decode),
    }
    if is_student(model):
        result["cache_bytes_analytic"] = model.cache_bytes(1, length, dtype)["total"]
    else:
        result["cache_bytes_analytic"] = result["teacher_kv_bytes"]
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def measure(
    model: nn.Module,
    lengths: list[int],
    decode_tokens: int = 16,
    repeats: int = 3,
    limit: int | None = None,
) -> dict[int, dict[str, float | int]]:
    """:func:`measure_length` for each length; prompts are shortened so decoding stays within ``limit``."""
    out = {}
    for n in lengths:
        prompt = n if limit is None else max(1, min(n, limit - decode_tokens))
        out[n] = measure_length(model, prompt, decode_tokens, repeats)
        out[n]["prompt_tokens"] = prompt
    return out
