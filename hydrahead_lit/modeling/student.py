"""The student class (a subclass of the teacher's `transformers` class) and its Hugging Face export.

The student's config is the teacher's config plus a `hydrahead` entry (head plan, LA options, base
class). The subclass rebuilds its attention modules from that entry in `__init__`, so the standard
`save_pretrained` / `from_pretrained` machinery (safetensors + config.json) round-trips it, offline
and without `trust_remote_code`. `generate()` gets a `HybridCache` unless one is passed.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from hydrahead_lit.modeling.cache import HybridCache, cache_bytes
from hydrahead_lit.modeling.linear_heads import LAConfig
from hydrahead_lit.modeling.plan import HeadPlan

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
        return super().forward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.config, HYDRAHEAD_CONFIG_KEY)["twins"]:
            raise ValueError("a stage-1 twin student decodes like its teacher; convert it with a head plan first")
        if self._given_cache(kwargs) is None and kwargs.get("use_cache", True):
            kwargs[self._cache_kwarg()] = HybridCache(self.config)
        return super().generate(*args, **kwargs)


@cache
def student_class(base_cls: type) -> type:
    """`HydraHead<Base>`: the teacher's class with hybrid attention (one class per base, cached)."""
    return type(f"HydraHead{base_cls.__name__}", (HydraHeadMixin, base_cls), {"__module__": __name__})


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
