"""Gated delta rule inputs taken from a real model's layers: the bundled demo teacher's keys.

Queries and keys are the teacher's own (after its q/k norms and RoPE), L2-normalised as the linear
heads normalise them; values are its values. Keys of a trained model are far from isotropic
(a shared direction, repeated tokens), which is what the stress tests need from them. The gates
are the linear heads' initial ones (decay half-lives 4 to 512 tokens) with beta near 0.9.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

TEACHER = Path(__file__).resolve().parents[2] / "data" / "demo" / "teacher"
# Repeated phrases, as real text has them: repeated tokens give identical keys.
TEXT = (
    "The old keeper counted the boats at dawn, and the boats came back at dusk. "
    "The old keeper counted the boats again. Nobody knew why the keeper counted the boats, "
    "but every morning the old keeper counted the boats at dawn."
)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, :, None] + torch.cat((-x2, x1), dim=-1) * sin[:, :, None]


@functools.cache
def demo_teacher_layer_inputs() -> list[dict[str, Tensor]]:
    """Per layer of the demo teacher: q, k, v ``[1, T, Hkv, D]`` (one query per KV head) and g, beta
    ``[1, T, Hkv]`` in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, local_files_only=True, dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    seen: dict[tuple[int, str], Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for name in ("q_norm", "k_norm", "v_proj"):
            hooks.append(getattr(attn, name).register_forward_hook(
                lambda _m, _a, out, key=(i, name): seen.__setitem__(key, out.detach())
            ))  # fmt: skip
    with torch.no_grad():
        model(ids)
        positions = torch.arange(ids.shape[1])[None]
        cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    for h in hooks:
        h.remove()
    cfg = model.config
    D, Hkv, Hq = cfg.head_dim, cfg.num_key_value_heads, cfg.num_attention_heads
    T = ids.shape[1]
    half_lives = torch.tensor([4.0 * (512 / 4) ** (i / max(Hkv - 1, 1)) for i in range(Hkv)], dtype=torch.float64)
    g = (-math.log(2.0) / half_lives).expand(1, T, Hkv).contiguous()
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(cfg.num_hidden_layers):
        q = seen[(i, "q_norm")].view(1, T, Hq, D)[:, :, :: Hq // Hkv]  # one query head per KV group
        k = seen[(i, "k_norm")].view(1, T, Hkv, D)
        v = seen[(i, "v_proj")].view(1, T, Hkv, D)
        q = F.normalize(_rotate(q, cos, sin).double(), dim=-1)
        k = F.normalize(_rotate(k, cos, sin).double(), dim=-1)
        beta = torch.sigmoid(torch.randn(1, T, Hkv, generator=gen, dtype=torch.float64) + 2.0)
        out.append({"q": q, "k": k, "v": v.double(), "g": g, "beta": beta})
    return out


def mean_key_coherence(k: Tensor, chunk: int = 64) -> float:
    """Mean |cos| between distinct keys of the same head within a chunk (0 for isotropic keys in
    high dimension, 1 for identical keys)."""
    kc = k[:, :chunk].transpose(1, 2)  # [B, H, C, D]
    gram = (kc @ kc.transpose(-1, -2)).abs()
    C = kc.shape[2]
    return ((gram.sum((-1, -2)) - C) / (C * (C - 1))).mean().item()
