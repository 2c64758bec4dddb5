"""Tiny GGUF teachers written in the test: a llama model with its own byte-level BPE tokenizer.

The file follows llama.cpp's conventions, which the `transformers` reader undoes: tensor names
(`blk.N.attn_q.weight`, ...), q/k rows permuted from the rotate-half layout to interleaved pairs,
no `output.weight` when the embeddings are tied, and the tokenizer as `tokenizer.ggml.*` metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import quantize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TEXT = (
    "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. "
    "The passkey is 71432. Remember it. import numpy as np\nfor i in range(10):\n    print(i)\n"
)


def tiny_bpe(vocab_size: int = 300, texts: list[str] | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts` (default: a few lines): 256 byte tokens, the specials, merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts or [TEXT] * 20, trainer)
    return tok


def tiny_llama(vocab_size: int, tied: bool = True, seed: int = 0, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               positions: int = 256, hidden: int = 64) -> transformers.LlamaForCausalLM:  # fmt: skip
    """A random llama (head_dim = hidden / heads, as llama.cpp assumes without a key_length entry)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1 so that a norm copied wrongly shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _interleave_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's layout of q/k rows: each head's two rotate-half halves interleaved pairwise."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_tensors(model: transformers.LlamaForCausalLM) -> dict[str, np.ndarray]:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _interleave_rope_rows(w, c.num_attention_heads)
            elif gg == "attn_k":
                w = _interleave_rope_rows(w, c.num_key_value_heads)
            out[f"blk.{i}.{gg}.weight"] = w
    return out


def write_gguf(
    path: Path,
    model: transformers.PreTrainedModel | None = None,
    tokenizer: Tokenizer | None = None,
    arch: str = "llama",
    quantized: bool = False,
    name: str = "tiny test model",
) -> Path:
    """Write `model` (a LlamaForCausalLM) and `tokenizer` as a GGUF file at `path`.

    `quantized` stores the MLP weights as Q8_0 (as real files mix quantized and float tensors);
    `arch` is written as `general.architecture` (another value makes a file of that architecture
    with llama-shaped content, for refusal tests).
    """
    tokenizer = tokenizer or tiny_bpe()
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    model = model or tiny_llama(len(tokens))
    c = model.config
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in SPECIAL_TOKENS else TokenType.NORMAL for t in tokens])
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    for tname, t in _llama_tensors(model).items():
        if quantized and ".ffn_" in tname and t.ndim == 2:
            w.add_tensor(tname, quantize(t, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(tname, t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
