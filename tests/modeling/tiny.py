"""Tiny teacher configs of the four supported families, built in the test (never downloaded)."""

from __future__ import annotations

import torch
import transformers

ARCHS = ("qwen3", "llama", "qwen2", "mistral")
VOCAB = 97


def tiny_teacher(arch: str = "qwen3", layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 24, **extra):
    """A randomly initialised fp32 teacher; head_dim differs from hidden/heads on purpose (64/4 = 16)."""
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
    )
    kw.update(extra)
    if arch == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw))
    elif arch == "llama":  # attention bias on, and a llama3-style RoPE scaling
        kw.setdefault("attention_bias", True)
        kw.setdefault(
            "rope_scaling",
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        )
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    elif arch == "qwen2":  # q/k/v biases, no o_proj bias
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    elif arch == "mistral":
        kw.setdefault("sliding_window", None)
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**kw))
    else:
        raise ValueError(arch)
    # Non-trivial biases and norms so that copying them wrongly shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def random_ids(batch: int = 2, length: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
