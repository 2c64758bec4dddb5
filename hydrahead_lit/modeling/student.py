"""The student class (a subclass of the teacher's `transformers` class) and its Hugging Face export.

The student's config is the teacher's config plus a `hydrahead` entry (head plan, LA options, base
class). The subclass rebuilds its attention modules from that entry in `__init__`, so the standard
`save_pretrained` / `from_pretrained` machinery (safetensors + config.json) round-trips it, offline
and without `trust_remote_code`. `generate()` gets a `HybridCache` unless one is passed, or on CUDA a
`HybridStaticCache` decoded by a CUDA-graph step (fast_decode.py).
"""

from __future__ import annotations

import inspect
import json
from functools import cache, wraps
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn

from hydrahead_lit.modeling.auto import adopt_student_config, student_config_class
from hydrahead_lit.modeling.cache import HybridCache, cache_bytes
from hydrahead_lit.modeling.fast_decode import fast_generation_cache, static_cache_forward
from hydrahead_lit.modeling.linear_heads import LAConfig
from hydrahead_lit.modeling.plan import HeadPlan
from hydrahead_lit.modeling.static_cache import HybridStaticCache

HYDRAHEAD_CONFIG_KEY = "hydrahead"
SPEC_VERSION = 1


def hydrahead_spec(base_cls: type, plan: HeadPlan, la_cfg: LAConfig, twins: bool, arch: dict) -> dict:
    """The `hydrahead` config entry; `arch` holds the teacher attention's bias / q-k norm layout."""
    return {
        "version": SPEC_VERSION,
        "base_architecture": base_cls.__name__,
        "arch": dict(arch),
        "plan": plan.to_dict(),
        "la": la_cfg.to_dict(),
        "twins": bool(twins),
    }


def token_validity(attention_mask: Tensor | None, num_tokens: int, has_la_heads: bool) -> Tensor | None:
    """[B, num_tokens] bool, True at the real tokens of this call, from the 2-D `attention_mask` of the
    whole sequence so far ([B, past + num_tokens]); None when there is no mask or no pad among them.

    LA heads must know which positions are pads to leave their state untouched there; a 4-D mask does not
    say it, so a model with LA heads refuses one.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        if not has_la_heads:
            return None  # FA heads read the mask as it is
        raise ValueError(
            f"a HydraHead student with LA heads needs the 2-D padding mask [batch, length] as attention_mask "
            f"(got {attention_mask.dim()}-D): LA heads skip pad tokens, which a {attention_mask.dim()}-D mask "
            "does not name. Pass the 2-D mask, or token_valid=[batch, new tokens] (True at real tokens)"
        )
    if attention_mask.shape[-1] < num_tokens:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} positions but this call has {num_tokens} tokens: "
            "it must cover the past and the new tokens"
        )
    valid = attention_mask[:, attention_mask.shape[-1] - num_tokens :].to(torch.bool)
    if not torch.compiler.is_compiling() and bool(valid.all()):
        return None  # no pad: the fast paths that do not handle padding stay open
    return valid


def _token_validity_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of the student's decoder model: passes `token_valid` down to every layer."""
    if kwargs.get("token_valid") is not None:
        return None
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    tokens = ids if ids is not None else embeds
    if mask is None or tokens is None:
        return None
    has_la = any(getattr(layer.self_attn, "num_la_heads", 0) for layer in module.layers)
    valid = token_validity(mask, tokens.shape[1], has_la)
    if valid is None:
        return None
    return args, {**kwargs, "token_valid": valid}


def install_padding_hook(model: nn.Module) -> None:
    """Make the student's decoder model derive `token_valid` from `attention_mask` on every call
    (generate, the causal LM's forward, or a direct call of the decoder model); idempotent."""
    from hydrahead_lit.modeling.arch import decoder_layers

    decoder_layers(model)  # a clear error for a model without `model.layers`
    inner = model.model
    if _token_validity_hook not in inner._forward_pre_hooks.values():
        inner.register_forward_pre_hook(_token_validity_hook, with_kwargs=True)


def _install_hybrid_attention(model: nn.Module) -> None:
    """Replace every layer's attention by an (uninitialised) HybridAttention following the config's spec."""
    from hydrahead_lit.modeling.arch import decoder_layers
    from hydrahead_lit.modeling.attention import HybridAttention

    spec = getattr(model.config, HYDRAHEAD_CONFIG_KEY)
    plan = HeadPlan.from_dict(spec["plan"])
    cfg = LAConfig.from_dict(spec["la"])
    n_heads = model.config.num_attention_heads
    for i, layer in enumerate(decoder_layers(model)):
        n_fa = n_heads if spec["twins"] else plan.num_fa_heads(i)
        n_la = n_heads if spec["twins"] else n_heads - n_fa
        ref = layer.self_attn.o_proj.weight
        layer.self_attn = HybridAttention(model.config, i, n_fa, n_la, cfg, twins=spec["twins"], arch=spec["arch"]).to(
            device=ref.device, dtype=ref.dtype
        )


class HydraHeadMixin:
    """Behaviour shared by every student class; mixed in before the teacher's class."""

    config: Any

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        if getattr(config, HYDRAHEAD_CONFIG_KEY, None) is None:
            raise ValueError("a HydraHead student config needs a 'hydrahead' entry: build students with hh.convert")
        _install_hybrid_attention(self)
        install_padding_hook(self)
        adopt_student_config(self)  # saved under its own model type (auto.py)

    @property
    def head_plan(self) -> HeadPlan:
        return HeadPlan.from_dict(getattr(self.config, HYDRAHEAD_CONFIG_KEY)["plan"])

    @property
    def la_config(self) -> LAConfig:
        return LAConfig.from_dict(getattr(self.config, HYDRAHEAD_CONFIG_KEY)["la"])

    def new_cache(self) -> HybridCache:
        return HybridCache(self.config)

    def cache_bytes(self, batch: int, seq_len: int, dtype: Any = None) -> dict[str, int]:
        """Hybrid cache bytes after `seq_len` tokens (and the teacher's KV bytes), see `cache_bytes`."""
        dtype = dtype or next(self.parameters()).dtype
        return cache_bytes(self.config, self.head_plan, self.la_config, batch, seq_len, dtype)

    def _cache_kwarg(self) -> str:
        # transformers 5.x renames `past_key_values` to `cache` (both accepted, with a warning, for a while)
        return "cache" if "cache" in inspect.signature(super().forward).parameters else "past_key_values"

    def _given_cache(self, kwargs: dict) -> Any:
        return kwargs.get("cache", kwargs.get("past_key_values"))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        spec = getattr(self.config, HYDRAHEAD_CONFIG_KEY)
        use_cache = kwargs.get("use_cache")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if spec["twins"]:
            kwargs["use_cache"] = False
        elif use_cache and self._given_cache(kwargs) is None:
            # transformers would otherwise create a plain DynamicCache, which has no room for LA states
            kwargs[self._cache_kwarg()] = HybridCache(self.config)
        elif isinstance(cache := self._given_cache(kwargs), HybridStaticCache):
            # The static cache's decode step puts the token of slot t at position t (fast_decode.py); the
            # position_ids generate() makes (pads not counted) would disagree with it on left-padded rows.
            kwargs.pop("position_ids", None)
            if (fast := static_cache_forward(self, cache, args, kwargs)) is not None:
                return fast  # a decode step of generate(), served by the cache's FastDecoder
        return super().forward(*args, **kwargs)

    fast_generation: bool | None = None
    """Default of `generate(fast=...)`: None takes the fast path (fast_decode.py) on CUDA when the request
    allows it (the eager path otherwise, logged), True insists, False keeps the eager path."""

    def generate(self, *args: Any, fast: bool | None = None, **kwargs: Any) -> Any:
        if getattr(self.config, HYDRAHEAD_CONFIG_KEY)["twins"]:
            raise ValueError("a stage-1 twin student decodes like its teacher; convert it with a head plan first")
        if self._given_cache(kwargs) is None and kwargs.get("use_cache", True):
            fast = self.fast_generation if fast is None else fast
            static = fast_generation_cache(self, args, kwargs, fast)
            kwargs[self._cache_kwarg()] = HybridCache(self.config) if static is None else static
            if static is not None:
                with static.decoder.serving_generate():
                    return super().generate(*args, **kwargs)
        return super().generate(*args, **kwargs)


def _forward_signed_as(base_cls: type) -> Any:
    """`HydraHeadMixin.forward` under the signature of `base_cls.forward`.

    `generate()` reads the forward's signature: only when it names `logits_to_keep` does the prefill ask for
    the last position's logits alone. Under `(*args, **kwargs)` every prompt position got vocabulary logits,
    15-30 GiB at 10 prompts of 16K-32K tokens (a 49K vocabulary)."""

    @wraps(base_cls.forward)
    def forward(self: HydraHeadMixin, *args: Any, **kwargs: Any) -> Any:
        return HydraHeadMixin.forward(self, *args, **kwargs)

    return forward


@cache
def student_class(base_cls: type) -> type:
    """`HydraHead<Base>`: the teacher's class with hybrid attention (one class per base, cached)."""
    attrs = {
        "__module__": __name__,
        "config_class": student_config_class(base_cls.config_class),  # see auto.py
        "forward": _forward_signed_as(base_cls),
    }
    return type(f"HydraHead{base_cls.__name__}", (HydraHeadMixin, base_cls), attrs)


def base_class(name: str) -> type:
    base = getattr(transformers, name, None)
    if base is None:
        raise ValueError(f"transformers has no class {name!r} (the student's base_architecture); upgrade transformers")
    return base


def load_student(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a student saved with `save_pretrained` (local files only)."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{p} is not a saved model directory (no config.json)")
    spec = json.loads(cfg_file.read_text()).get(HYDRAHEAD_CONFIG_KEY)
    if spec is None:
        raise ValueError(f"{p} holds a plain transformers model, not a HydraHead student (no 'hydrahead' config entry)")
    cls = student_class(base_class(spec["base_architecture"]))
    kwargs.setdefault("local_files_only", True)
    return cls.from_pretrained(p, **kwargs)


def is_student(model: nn.Module) -> bool:
    return isinstance(model, HydraHeadMixin)
