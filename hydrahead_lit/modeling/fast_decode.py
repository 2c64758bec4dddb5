"""Fast generation for a HydraHead student: a static cache, a fused single-token step, a CUDA graph.

`FastDecoder(model, cache)` runs one decode step for the whole batch over a `HybridStaticCache`: per layer
the pieces of `decode_step.py` (one fused input projection, FA heads over the static cache, the LA inputs),
the gated delta rule update for one token (fla's fused recurrent kernel on CUDA when it imports, else the
PyTorch recurrence), the fusion and the MLP. On CUDA the whole step is captured once in a
`torch.cuda.CUDAGraph` and replayed per token (optionally with the pointwise pieces compiled first), so a
token costs one graph launch. Prefill stays on the model's own (chunked) forward.

`student.generate()` takes this path by default on CUDA (`fast=False`, or `model.fast_generation = False`,
keeps the eager path; `fast=True` insists). It allocates a static cache for batch x
(prompt + new tokens), attaches a decoder, and lets `transformers` run the loop (sampling, stopping per row,
streamers): the student's forward hands each single-token step of that loop to the decoder
(`static_cache_forward`). `generate()` marks every new token real (after a row's EOS it feeds pads marked
real, whose outputs it discards), so the decode step writes every new token; prompt pads were marked by the
prefill (`HybridStaticCache.slot_valid`) and stay masked in the FA heads, and the LA heads skipped them in the
prefill."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.decode_step import (
    FusedLinear,
    LayerDims,
    LayerTensors,
    attention_block,
    attention_inputs,
    attention_output,
    fa_heads,
    write_kv,
)
from hydrahead_lit.modeling.static_cache import HybridStaticCache
from hydrahead_lit.ops.la_backend import gated_delta_rule, select_la_backend

logger = logging.getLogger("hydrahead_lit")

_DYNAMIC_ROPE = ("dynamic", "longrope")  # these RoPE types resize on the host from the positions: no graph


def _check_block(block: nn.Module, i: int) -> None:
    """The step reimplements the decoder block's norms (RMSNorm) and calls its MLP: refuse other blocks."""
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = getattr(block, name, None)
        if norm is None or not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon"):
            raise ValueError(
                f"fast decoding needs decoder blocks with RMSNorm {name} (Llama, Qwen2, Qwen3, Mistral); layer {i} "
                f"has {type(norm).__name__}. Use generate(..., fast=False)"
            )
    if getattr(block, "mlp", None) is None or not hasattr(block.self_attn, "fusion"):
        raise ValueError(f"layer {i} is not a HydraHead decoder block (mlp + hybrid self_attn); use fast=False")


def _window(attn: nn.Module) -> int | None:
    """The sliding window the model's own mask applies to this layer: per `layer_types` where the config
    has them; Mistral without them slides every layer when `sliding_window` is set."""
    if attn.sliding_window is not None:
        return attn.sliding_window
    config = attn.config
    if getattr(config, "layer_types", None) is None and config.model_type == "mistral":
        return getattr(config, "sliding_window", None)
    return None


class _LayerStep:
    """One layer of the step: its fused projection, tensors and dims."""

    def __init__(self, block: nn.Module, cache_layer: Any, capacity: int, i: int) -> None:
        _check_block(block, i)
        attn, la = block.self_attn, block.self_attn.la
        self.mlp = block.mlp
        self.proj = FusedLinear(attn.input_linears)  # the order LayerDims.splits cuts it in
        qk_norm = attn.q_norm if attn.q_norm is not None else (la.q_norm if la is not None else None)
        self.dims = LayerDims(
            num_fa_heads=attn.num_fa_heads, num_fa_kv=attn.num_fa_kv if attn.num_fa_heads else 0,
            num_la_heads=attn.num_la_heads, head_dim=attn.head_dim, fa_scaling=attn.scaling,
            norm_eps=block.input_layernorm.variance_epsilon, qk_norm_eps=qk_norm.eps if qk_norm is not None else 0.0,
            fusion_eps=attn.fusion.eps, use_rope_la=la is not None and la.cfg.use_rope,
            output_gate=la is not None and la.g_proj is not None, attention_block=attention_block(capacity),
        )  # fmt: skip
        self.window = _window(block.self_attn)
        self.la_backend = "torch"
        if la is not None and select_la_backend(cache_layer.device, False, la.cfg.backend) == "fla":
            self.la_backend = "fla"  # its fused recurrent kernel; the project's chunked Triton op is not for T = 1
        state = cache_layer.la_state
        self.recurrent = state["recurrent"]
        self.tensors = LayerTensors(
            input_norm=block.input_layernorm.weight, proj_weight=self.proj.weight, proj_bias=self.proj.bias,
            fa_q_norm=attn.q_norm.weight if attn.q_norm is not None else None,
            fa_k_norm=attn.k_norm.weight if attn.k_norm is not None else None,
            keys=cache_layer.keys, values=cache_layer.values,
            la_q_norm=la.q_norm.weight if la is not None and la.q_norm is not None else None,
            la_k_norm=la.k_norm.weight if la is not None and la.k_norm is not None else None,
            conv_weight=la.conv if la is not None else None, conv_state=state["conv"],
            A_log=la.A_log if la is not None else None, dt_bias=la.dt_bias if la is not None else None,
            fa_gain=attn.fusion.fa_gain, la_gain=attn.fusion.la_gain,
            o_weight=attn.o_proj.weight, o_bias=attn.o_proj.bias, post_norm=block.post_attention_layernorm.weight,
        )  # fmt: skip


def _gdn_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, backend: str) -> Tensor:
    """The gated delta rule for one token; the state is updated in place."""
    o, final = gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True, backend=backend)
    state.copy_(final)
    return o


class FastDecoder:
    """Single-token decode steps of `model` over `cache`; `step(tokens [B, 1]) -> logits [B, V]`.

    `graph` (default: on CUDA) captures the step in a CUDA graph, on the fresh cache, which it then resets:
    build the decoder before the prefill. `compile` (default: with the graph) compiles the step's pointwise
    pieces with `torch.compile` before the capture; if compilation fails, the step runs uncompiled (logged).
    In graph mode the returned logits live in the graph's memory: the next step overwrites them.
    """

    def __init__(
        self, model: nn.Module, cache: HybridStaticCache, graph: bool | None = None, compile: bool | None = None
    ) -> None:
        if not isinstance(cache, HybridStaticCache):
            raise TypeError(f"a FastDecoder needs a HybridStaticCache, got {type(cache).__name__}")
        layers = decoder_layers(model)
        if len(layers) != len(cache.layers):
            raise ValueError(f"the cache has {len(cache.layers)} layers, the model {len(layers)}: not its cache")
        self.model, self.cache = model, cache
        self.embed, self.rotary, self.norm = model.model.embed_tokens, model.model.rotary_emb, model.model.norm
        self.lm_head = model.lm_head
        self.layers = [_LayerStep(b, cache.layers[i], cache.capacity, i) for i, b in enumerate(layers)]
        device = cache.device
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # the slot the next token is written to
        self.slots = torch.arange(cache.capacity, device=device)
        self._host_pos = 0
        self.serving = False
        self.graph: torch.cuda.CUDAGraph | None = None
        self._logits: Tensor | None = None
        want_graph = device.type == "cuda" if graph is None else graph
        if want_graph and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the cache is on {device.type}: use graph=False")
        if want_graph and (reason := self._graph_refusal()) is not None:
            if graph:
                raise ValueError(f"the decode step cannot be captured: {reason}; use graph=False")
            logger.info("fast decoding without a CUDA graph: %s", reason)
            want_graph = False
        self.compiled = want_graph if compile is None else compile
        self._use_compiled(self.compiled)
        if want_graph:
            self._capture()

    def _use_compiled(self, on: bool) -> None:
        """The step's pieces (decode_step.py), compiled with torch.compile (once per layer shape) or not."""
        pieces = (attention_inputs, fa_heads, attention_output)
        if on:
            pieces = tuple(torch.compile(fn, dynamic=False) for fn in pieces)
        self._inputs, self._fa_heads, self._output = pieces
        self.compiled = on

    def _graph_refusal(self) -> str | None:
        rope_type = getattr(self.rotary, "rope_type", "default")
        types = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
        if any(any(d in str(t) for d in _DYNAMIC_ROPE) for t in types):
            return f"RoPE type {rope_type!r} is resized on the host from the positions"
        return None

    # --- the step ------------------------------------------------------------------------------------------------
    def _visible(self, window: int | None) -> Tensor:
        """[B, L]: the slots a query at `pos` attends to (real tokens up to `pos`, within the window)."""
        seen = self.slots <= self.pos
        if window is not None:
            seen = seen & (self.slots > self.pos - window)
        return self.cache.slot_valid & seen

    def _step(self) -> Tensor:
        h = self.embed(self.tokens)
        cos, sin = self.rotary(h, self.pos.view(1, 1))
        visible = {w: self._visible(w) for w in {layer.window for layer in self.layers}}
        for layer in self.layers:
            w, d = layer.tensors, layer.dims
            fa, la, gate = self._inputs(h, w, d, cos, sin)
            if fa is not None:
                write_kv(w, fa[1], fa[2], self.pos)
                fa = self._fa_heads(fa[0], w, d, visible[layer.window])
            o = _gdn_step(*la, layer.recurrent, layer.la_backend) if la is not None else None
            h, x = self._output(h, fa, o, gate, w, d)
            h = h + layer.mlp(x)
        logits = self.lm_head(self.norm(h[:, -1]))
        self.pos.add_(1)
        return logits

    @torch.no_grad()
    def _capture(self) -> None:
        if self.cache.get_seq_length() != 0:
            raise ValueError("capture the decode step on a fresh cache (build the FastDecoder before the prefill)")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up: Triton autotuning, compilation, cuBLAS workspaces
            try:
                for _ in range(3):
                    self._step()
            except Exception as err:  # a compiler failure: capture the uncompiled step instead
                if not self.compiled:
                    raise
                logger.warning("compiling the decode step failed (%s: %s); it runs uncompiled", type(err).__name__, err)
                self._use_compiled(False)
                for _ in range(3):
                    self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._logits = self._step()
        self.cache.reset()  # the warm-up steps wrote into it
        self.pos.zero_()

    def refresh(self) -> None:
        """Rebuild the fused projections of parameters that changed since the decoder was built (in place)."""
        for layer in self.layers:
            layer.proj.refresh()

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Decode one token per row: `tokens` [B, 1] (all real) -> logits [B, V] of the next token."""
        if tokens.shape != self.tokens.shape:
            raise ValueError(f"tokens must be [batch, 1] = {list(self.tokens.shape)}, got {list(tokens.shape)}")
        n = self.cache.get_seq_length()
        self.cache.layers[0]._check_room(1)
        if n != self._host_pos:  # tokens were written outside the step (the prefill): move the device position
            self.pos.fill_(n)
            self._host_pos = n
        self.tokens.copy_(tokens)
        if self.graph is not None:
            self.graph.replay()
            logits = self._logits
        else:
            logits = self._step()
        self._host_pos += 1
        self.cache.advance(1)
        return logits

    @contextmanager
    def serving_generate(self):
        """While inside, the student's forward hands single-token steps on this cache to the decoder."""
        self.serving = True
        try:
            yield self
        finally:
            self.serving = False


# --- generate() integration ------------------------------------------------------------------------------------
_UNSUPPORTED_GENERATE = ("assistant_model", "prompt_lookup_num_tokens", "output_attentions", "output_hidden_states")


def _fast_refusal(model: nn.Module, kwargs: dict) -> str | None:
    """Why `generate(**kwargs)` cannot take the fast path, or None."""
    gc = kwargs.get("generation_config") or model.generation_config
    for name in ("num_beams", "num_return_sequences"):
        if (kwargs.get(name) or getattr(gc, name, 1) or 1) != 1:
            return f"{name} > 1 (the static cache has a fixed batch)"
    for name in _UNSUPPORTED_GENERATE:
        if kwargs.get(name) or getattr(gc, name, None):
            return f"{name} is not supported by the fused decode step"
    if kwargs.get("use_cache") is False:
        return "use_cache=False"
    if kwargs.get("position_ids") is not None:
        return "position_ids are given (the decode step places the token written at slot t at position t)"
    return None


def _prompt(args: tuple, kwargs: dict) -> Tensor:
    given = (args[0] if args else None, kwargs.get("input_ids"), kwargs.get("inputs"), kwargs.get("inputs_embeds"))
    for value in given:
        if value is not None:
            return value
    raise ValueError("fast generation needs input_ids (or inputs_embeds) to size its static cache")


def _generation_length(model: nn.Module, prompt_len: int, kwargs: dict) -> int:
    gc = kwargs.get("generation_config") or model.generation_config
    new = kwargs.get("max_new_tokens", getattr(gc, "max_new_tokens", None))
    if new is not None:
        return prompt_len + new
    total = kwargs.get("max_length", getattr(gc, "max_length", None)) or prompt_len + 20
    return max(total, prompt_len + 1)


def _coarse_length(n: int) -> int:
    """`n` rounded up to one of 8 lengths per octave (at most 12.5% more from 1024 on; a multiple of 128 below):
    generate() calls of nearby lengths share a static cache shape, hence the compiled step (torch.compile
    specialises on shapes)."""
    step = max(128, (1 << (max(n - 1, 1).bit_length() - 1)) // 8)
    return -(-n // step) * step


def fast_generation_cache(model: nn.Module, args: tuple, kwargs: dict, fast: bool | None) -> HybridStaticCache | None:
    """The static cache with an attached `FastDecoder` for `model.generate(*args, **kwargs)`, or None for the
    eager path. `fast=None` takes the fast path on CUDA when the request allows it; `fast=True` insists (an
    error says why it cannot), `fast=False` declines."""
    if fast is False:
        return None
    device = next(model.parameters()).device
    reason = _fast_refusal(model, kwargs)
    if fast is None and device.type != "cuda":
        return None
    if reason is not None:
        if fast:
            raise ValueError(f"fast generation cannot serve this request: {reason}; use fast=False")
        logger.info("generate: eager path (%s)", reason)
        return None
    prompt = _prompt(args, kwargs)
    batch, length = prompt.shape[0], _generation_length(model, prompt.shape[1], kwargs)
    cache = HybridStaticCache(model, batch, _coarse_length(length))
    try:
        cache.decoder = FastDecoder(model, cache)
    except Exception as err:  # a model the step does not cover, or a failed capture: the eager path still runs
        if fast:
            raise
        logger.warning("generate: eager path (no fast decode step: %s: %s)", type(err).__name__, err)
        return None
    mode = "CUDA graph" if cache.decoder.graph is not None else "no graph"
    logger.info("generate: fast path (static cache %d x %d slots, %s)", batch, cache.capacity, mode)
    return cache


def static_cache_forward(model: nn.Module, cache: HybridStaticCache, args: tuple, kwargs: dict) -> Any:
    """Called by the student's forward with a static cache: the decoder's output for a single-token step of
    `generate()`'s loop, else None after marking the new tokens' slots (the eager forward follows)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    tokens = ids if ids is not None else kwargs.get("inputs_embeds")
    if tokens is None:
        return None
    decoder = cache.decoder
    plain = not any(kwargs.get(k) for k in ("labels", "output_attentions", "output_hidden_states", "attention_probe"))
    if decoder is not None and decoder.serving and ids is not None and ids.shape[1] == 1 and plain:
        if cache.get_seq_length() > 0:
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.device.type == "cpu" and not bool(mask[:, -1].all()):
                raise ValueError("the fast decode step writes real tokens only; this step's token is marked a pad")
            logits = decoder.step(ids)
            return _causal_lm_output(model, logits[:, None].clone(), cache)
    cache.record_tokens(kwargs.get("attention_mask"), tokens.shape[1])
    return None


def _causal_lm_output(model: nn.Module, logits: Tensor, cache: HybridStaticCache) -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    key = "cache" if "cache" in fields else "past_key_values"  # transformers renamed the field in 5.x
    return CausalLMOutputWithPast(logits=logits, **{key: cache})


def generate_fast(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`model.generate(*args, fast=True, **kwargs)`: the fast path, or an error saying why it cannot run."""
    return model.generate(*args, fast=True, **kwargs)
