"""Efficiency per context length and batch: cache bytes, prefill time, decode time, share of the bandwidth limit.

Prompts are random token ids (the cost does not depend on the text). Each repeat prefills afresh, because a
recurrent LA state cannot be rewound, then decodes greedily one token per row at a time; times are medians
over repeats, with CUDA synchronised around each timed region. Two decode paths (`path`):

- ``eager``: the model's forward per token over a dynamic cache (`HybridCache` for a student, transformers'
  `DynamicCache` for a teacher), as plain `transformers` decoding runs.
- ``fast``: a student decodes with `FastDecoder` over a `HybridStaticCache` (a CUDA graph on CUDA); a
  teacher with transformers' `StaticCache` and the same treatment (`decode_graph.TeacherGraphDecoder`: its
  forward, optionally compiled, captured in one CUDA graph, the same decode attention as the student's FA
  heads). Prefill runs the model's own forward: at batch 1 the student's straight into its static cache
  (as `generate()` does); the teacher's, and a batch's row by row (one row's activations at a time),
  into a dynamic cache that is copied into the static one, the copy timed with the prefill. The eager path
  prefills the whole batch in one forward.

The bandwidth limit of a decode step is the bytes it must read (every weight once, the keys/values of the
context, the LA states read and written) over the device's measured copy bandwidth (`copy_bandwidth`).
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hydrahead_lit.eval.decode_graph import TeacherGraphDecoder
from hydrahead_lit.modeling.fast_decode import FastDecoder
from hydrahead_lit.modeling.static_cache import HybridStaticCache
from hydrahead_lit.modeling.student import is_student

PATHS = ("eager", "fast")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_nbytes(cache: Any) -> int:
    """Bytes held by a generation cache: the hybrid caches' own count, else every layer's keys/values."""
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


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decode step reads: every parameter once, the input embedding excepted (a step
    reads only its rows) unless it is also the output projection."""
    embed = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is embed
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed or tied)


def decode_read_bytes(model: nn.Module, batch: int, context: int, dtype: torch.dtype) -> int:
    """Bytes one decode step of `batch` rows must read at `context` tokens: the weights, the FA keys/values of
    the context, and the LA recurrent and conv states (read and written)."""
    if is_student(model):
        c = model.cache_bytes(batch, context, dtype)
        return weight_bytes(model) + c["kv"] + 2 * (c["la_state"] + c["conv_state"])
    return weight_bytes(model) + teacher_kv_bytes(model.config, batch, context, dtype)


def copy_bandwidth(device: torch.device | str, nbytes: int | None = None, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s from a large device-to-device copy (bytes read plus written)."""
    device = torch.device(device)
    if nbytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            nbytes = min(2**32, free // 8)
        else:
            nbytes = 2**26
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def _forward_params(model: nn.Module) -> set[str]:
    """Named parameters of the model's forward (a student's own forward only forwards **kwargs)."""
    for cls in type(model).__mro__:
        fn = cls.__dict__.get("forward")
        if fn is not None:
            names = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
            if len(names) > 1:
                return names
    return set()


def cache_kwarg(model: nn.Module) -> str:
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


class _Eager:
    """The model's forward per token over a dynamic cache."""

    graph = compiled = False

    def __init__(self, model: nn.Module) -> None:
        self.model, self.key, self.cache = model, cache_kwarg(model), None
        # Logits for the last position only, as generate() does (full logits at 128K tokens and a 150K
        # vocabulary would dominate time and memory).
        self.last = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}

    def prefill(self, ids: Tensor) -> Tensor:
        self.cache = None
        out = self.model(input_ids=ids, use_cache=True, **self.last)
        self.cache = _output_cache(out)
        return out.logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        return self.model(input_ids=tokens, use_cache=True, **{self.key: self.cache}).logits[:, -1]

    def nbytes(self) -> int:
        return cache_nbytes(self.cache)


class _FastStudent(_Eager):
    """`FastDecoder` over a `HybridStaticCache`; the prefill runs the student's forward into that cache."""

    def __init__(self, model: nn.Module, batch: int, capacity: int, compile: bool | None) -> None:
        super().__init__(model)
        self.cache = self.static = HybridStaticCache(model, batch, capacity)
        self.decoder = FastDecoder(model, self.cache, compile=compile)
        self.graph, self.compiled = self.decoder.graph is not None, self.decoder.compiled

    def prefill(self, ids: Tensor) -> Tensor:
        self.static.reset()
        self.cache = self.static
        if ids.shape[0] == 1:  # what generate() does: the forward writes straight into the static cache
            return self.model(input_ids=ids, use_cache=True, **{self.key: self.cache}, **self.last).logits[:, -1]
        logits = []
        for r in range(ids.shape[0]):  # row by row: one row's activations at a time (a batch of long prompts)
            logits.append(_Eager.prefill(self, ids[r : r + 1]))
            self.static.load(self.cache, slice(r, r + 1))
        self.cache = self.static
        return torch.cat(logits)

    def step(self, tokens: Tensor) -> Tensor:
        return self.decoder.step(tokens)


class _FastTeacher(_Eager):
    """transformers' `StaticCache` decoded by `TeacherGraphDecoder`; the prefill goes through a dynamic cache."""

    def __init__(self, model: nn.Module, batch: int, capacity: int, compile: bool | None) -> None:
        super().__init__(model)
        self.decoder = TeacherGraphDecoder(model, batch, capacity, compile=compile)
        self.graph, self.compiled = self.decoder.graph is not None, self.decoder.compiled

    def prefill(self, ids: Tensor) -> Tensor:
        logits = []
        for r in range(ids.shape[0]):  # row by row, as the student's fast path does for a batch
            logits.append(super().prefill(ids[r : r + 1]))
            self.decoder.load(self.cache, ids.shape[1], slice(r, r + 1))
            self.cache = None  # copied: let it go
        return torch.cat(logits)

    def step(self, tokens: Tensor) -> Tensor:
        return self.decoder.step(tokens)

    def nbytes(self) -> int:
        return self.decoder.nbytes()


def _runner(model: nn.Module, path: str, batch: int, capacity: int, compile: bool | None) -> _Eager:
    if path not in PATHS:
        raise ValueError(f"unknown decode path {path!r}; choose from {', '.join(PATHS)}")
    if path == "eager":
        return _Eager(model)
    return (_FastStudent if is_student(model) else _FastTeacher)(model, batch, capacity, compile)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def measure_length(
    model: nn.Module,
    length: int,
    decode_tokens: int = 16,
    repeats: int = 3,
    seed: int = 0,
    batch: int = 1,
    path: str = "eager",
    compile: bool | None = None,
    bandwidth: float | None = None,
) -> dict[str, Any]:
    """Figures for `batch` prompts of `length` tokens decoded on `path` ("eager" or "fast", see the module
    docstring). `bandwidth` (bytes/s, from `copy_bandwidth`) adds the share of the bandwidth limit."""
    if min(length, decode_tokens, repeats, batch) < 1:
        raise ValueError(
            f"need length, decode_tokens, repeats, batch >= 1 (got {length}, {decode_tokens}, {repeats}, {batch})"
        )
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(device)
    t0 = time.perf_counter()
    runner = _runner(model, path, batch, length + decode_tokens + 1, compile)
    setup_s = time.perf_counter() - t0
    # One untimed pass first: kernel compilation, autotuning and allocator growth are not steady state.
    runner.step(runner.prefill(ids).argmax(-1, keepdim=True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill, decode, tokens, nbytes = [], [], None, 0
    for _ in range(repeats):
        elapsed, logits = _timed(device, lambda: runner.prefill(ids))
        prefill.append(elapsed)
        nbytes = runner.nbytes()  # after the prefill (a dynamic cache grows while decoding)
        token = logits.argmax(-1, keepdim=True)
        produced = []

        def run_decode(token: Tensor = token, produced: list = produced) -> None:
            for _ in range(decode_tokens):
                token = runner.step(token).argmax(-1, keepdim=True)
                produced.append(token)

        decode.append(_timed(device, run_decode)[0])
        tokens = torch.cat(produced, dim=1).cpu() if tokens is None else tokens
    step_s = statistics.median(decode) / decode_tokens
    read = decode_read_bytes(model, batch, length + decode_tokens // 2, dtype)
    result: dict[str, Any] = {
        "path": path,
        "batch": batch,
        "graph": runner.graph,
        "compiled": runner.compiled,
        "setup_s": setup_s,
        "cache_bytes": nbytes,
        "teacher_kv_bytes": teacher_kv_bytes(model.config, batch, length, dtype),
        "prefill_s": statistics.median(prefill),
        "prefill_tokens_per_s": batch * length / statistics.median(prefill),
        "decode_s_per_step": step_s,
        "decode_tokens_per_s": batch / step_s,
        "read_bytes_per_step": read,
        "tokens": tokens.tolist(),  # the first repeat's greedy tokens, [batch, decode_tokens]
    }
    if path == "fast":
        result["cache_bytes_analytic"] = _static_bytes_analytic(model, runner, batch, dtype)
    elif is_student(model):
        result["cache_bytes_analytic"] = model.cache_bytes(batch, length, dtype)["total"]
    else:
        result["cache_bytes_analytic"] = result["teacher_kv_bytes"]
    if bandwidth:
        result["bandwidth_bytes_per_s"] = bandwidth
        result["bandwidth_limit_fraction"] = read / bandwidth / step_s
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def _static_bytes_analytic(model: nn.Module, runner: _Eager, batch: int, dtype: torch.dtype) -> int:
    if is_student(model):
        capacity = runner.cache.capacity
        return model.cache_bytes(batch, capacity, dtype)["total"] + batch * capacity  # + the slot mask
    return teacher_kv_bytes(model.config, batch, runner.decoder.capacity, dtype)


def measure(
    model: nn.Module,
    lengths: list[int],
    decode_tokens: int = 16,
    repeats: int = 3,
    limit: int | None = None,
) -> dict[int, dict[str, Any]]:
    """:func:`measure_length` (eager, batch 1) for each length; prompts are shortened so decoding stays within
    ``limit``."""
    out = {}
    for n in lengths:
        prompt = n if limit is None else max(1, min(n, limit - decode_tokens))
        out[n] = measure_length(model, prompt, decode_tokens, repeats)
        out[n]["prompt_tokens"] = prompt
        del out[n]["tokens"]
    return out
