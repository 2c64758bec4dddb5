"""Which KV groups of which layers keep full softmax attention (FA); the rest become linear attention (LA).

The unit of choice is the *KV group*: with grouped-query attention, a query head that keeps FA needs its
group's keys and values in the cache, so only group-level choices shrink the KV cache. A plan lists, per
layer, the FA groups in the order their heads will be laid out after conversion (FA heads come first).
"""

from __future__ import annotations

import json
import random as _random
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

PLAN_FORMAT_VERSION = 1


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(num_layers, num_kv_groups, query heads per group) of a `transformers` decoder config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    missing = [a for a in ("num_hidden_layers", "num_attention_heads") if getattr(text, a, None) is None]
    if missing:
        raise ValueError(f"config of type {type(config).__name__} has no {', '.join(missing)}: not a decoder LM")
    n_heads = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    if n_heads % n_kv:
        raise ValueError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
    return text.num_hidden_layers, n_kv, n_heads // n_kv


def fa_groups_for_ratio(total_groups: int, ratio: float) -> int:
    """Number of FA groups so that LA:FA heads == ratio:1 (ratio=7 keeps one group in eight)."""
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0 (LA:FA heads), got {ratio}")
    n_fa = Fraction(total_groups) / (Fraction(ratio).limit_denominator(1000) + 1)
    if n_fa.denominator != 1 or n_fa < 1:
        feasible = sorted({total_groups // k - 1 for k in range(1, total_groups + 1) if total_groups % k == 0})
        raise ValueError(
            f"an LA:FA ratio of {ratio}:1 cannot be met with {total_groups} KV groups "
            f"({float(n_fa):.3g} FA groups would be needed); ratios that can: {feasible}"
        )
    return int(n_fa)


@dataclass(frozen=True)
class HeadPlan:
    """Per layer, the KV groups that keep full attention, in their post-conversion order."""

    num_layers: int
    num_kv_groups: int
    group_size: int
    fa_groups: tuple[tuple[int, ...], ...]
    method: str = "manual"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.fa_groups) != self.num_layers:
            raise ValueError(f"plan has {len(self.fa_groups)} layers, the model has {self.num_layers}")
        for layer, groups in enumerate(self.fa_groups):
            bad = [g for g in groups if not 0 <= g < self.num_kv_groups]
            if bad:
                raise ValueError(
                    f"layer {layer}: KV group(s) {bad} do not exist (the model has groups 0..{self.num_kv_groups - 1})"
                )
            if len(set(groups)) != len(groups):
                raise ValueError(f"layer {layer}: KV groups listed twice in {list(groups)}")

    # ----- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_fa_groups(
        cls, config: Any, fa_groups: dict[int, list[int]] | list[list[int]], method: str = "manual"
    ) -> HeadPlan:
        """Plan from {layer: [FA KV groups]} (layers not named are all-LA) or a full per-layer list."""
        n_layers, n_kv, gs = attention_shape(config)
        if isinstance(fa_groups, dict):
            bad = [k for k in fa_groups if not (isinstance(k, int) and 0 <= k < n_layers)]
            if bad:
                raise ValueError(f"layer(s) {bad} do not exist (the model has layers 0..{n_layers - 1})")
            per_layer = [tuple(int(g) for g in fa_groups.get(i, ())) for i in range(n_layers)]
        else:
            per_layer = [tuple(int(g) for g in groups) for groups in fa_groups]
        return cls(n_layers, n_kv, gs, tuple(per_layer), method)

    @classmethod
    def all_fa(cls, config: Any) -> HeadPlan:
        n_layers, n_kv, gs = attention_shape(config)
        return cls(n_layers, n_kv, gs, tuple(tuple(range(n_kv)) for _ in range(n_layers)), "all_fa")

    @classmethod
    def all_la(cls, config: Any) -> HeadPlan:
        n_layers, n_kv, gs = attention_shape(config)
        return cls(n_layers, n_kv, gs, tuple(() for _ in range(n_layers)), "all_la")

    @classmethod
    def layerwise(cls, config: Any, fa_layers: list[int]) -> HeadPlan:
        """The layer-wise baseline: whole layers keep FA, every other layer is all-LA."""
        n_layers, n_kv, _ = attention_shape(config)
        plan = cls.from_fa_groups(config, {int(i): list(range(n_kv)) for i in fa_layers}, method="layerwise")
        return plan

    @classmethod
    def random(cls, config: Any, ratio: float, seed: int = 0) -> HeadPlan:
        """FA groups drawn uniformly among all (layer, group) pairs, as many as `ratio` allows."""
        n_layers, n_kv, gs = attention_shape(config)
        n_fa = fa_groups_for_ratio(n_layers * n_kv, ratio)
        pool = [(layer, g) for layer in range(n_layers) for g in range(n_kv)]
        chosen = sorted(_random.Random(seed).sample(pool, n_fa))
        mapping: dict[int, list[int]] = {}
        for layer, g in chosen:
            mapping.setdefault(layer, []).append(g)
        plan = cls.from_fa_groups(config, mapping, method="random")
        plan.meta.update(seed=seed, ratio=ratio)
        return plan

    # ----- properties ---------------------------------------------------------------------------------
    @property
    def total_groups(self) -> int:
        return self.num_layers * self.num_kv_groups

    @property
    def num_fa_groups(self) -> int:
        return sum(len(g) for g in self.fa_groups)

    @property
    def ratio(self) -> float:
        """LA:FA heads (7.0 means 7:1); inf when no head keeps FA."""
        n_fa = self.num_fa_groups
        return float("inf") if n_fa == 0 else (self.total_groups - n_fa) / n_fa

    @property
    def kv_cache_fraction(self) -> float:
        """Fraction of the teacher's KV cache bytes this plan keeps (LA state not included)."""
        return self.num_fa_groups / self.total_groups

    def la_groups(self, layer: int) -> tuple[int, ...]:
        fa = set(self.fa_groups[layer])
        return tuple(g for g in range(self.num_kv_groups) if g not in fa)

    def head_order(self, layer: int) -> list[int]:
        """Original query-head indices in their post-conversion order: FA groups' heads first."""
        gs = self.group_size
        groups = list(self.fa_groups[layer]) + list(self.la_groups(layer))
        return [g * gs + i for g in groups for i in range(gs)]

    def num_fa_heads(self, layer: int) -> int:
        return len(self.fa_groups[layer]) * self.group_size

    def check_compatible(self, config: Any) -> None:
        shape = attention_shape(config)
        mine = (self.num_layers, self.num_kv_groups, self.group_size)
        if shape != mine:
            raise ValueError(f"plan is for (layers, kv groups, group size) = {mine} but the model has {shape}")

    # ----- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "num_layers": self.num_layers,
            "num_kv_groups": self.num_kv_groups,
            "group_size": self.group_size,
            "fa_groups": [list(g) for g in self.fa_groups],
            "method": self.method,
            "ratio": None if self.num_fa_groups == 0 else self.ratio,
            "kv_cache_fraction": self.kv_cache_fraction,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> HeadPlan:
        try:
            return cls(
                int(d["num_layers"]),
                int(d["num_kv_groups"]),
                int(d["group_size"]),
                tuple(tuple(int(g) for g in groups) for groups in d["fa_groups"]),
                d.get("method", "manual"),
                dict(d.get("meta", {})),
            )
        except KeyError as e:
            raise ValueError(f"not a head plan: missing key {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HeadPlan:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"head plan file {p} does not exist")
        d = json.loads(p.read_text())
        return cls.from_dict(d.get("plan", d))  # a head_selection.json holds its plan under "plan"

    def __str__(self) -> str:
        ratio = "inf" if self.num_fa_groups == 0 else f"{self.ratio:.3g}"
        return (
            f"HeadPlan({self.method}: {self.num_fa_groups}/{self.total_groups} KV groups FA, LA:FA={ratio}:1, "
            f"KV cache {self.kv_cache_fraction:.1%} of the teacher's)"
        )
