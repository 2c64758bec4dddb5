"""A 2-layer Llama teacher whose retrieval head is known by construction (an induction circuit on digits).

Residual stream (hidden 64): dims 0-9 one-hot *current* digit, dim 10 a constant 1, dims 11-20 the
*previous* digit (written by layer 0), dims 21-30 the *predicted next* digit (written by layer 1), dim 31
a 1 for every non-digit token (so all tokens have the same norm and the constant dim the same weight).
MLPs are zero, every head not named below has random q/k/v and a zero o_proj column (it never changes
the residual stream), so the function is exactly the circuit:

* layer 0, head 0 (KV group 0): a previous-token head. Its q and k only read the constant dim and live in
  the four fastest RoPE pairs, with q rotated back by one step per pair: the logit is
  ``s^2 * sum_i cos((Δ - 1) θ_i)``, largest at Δ = 1. It copies the previous digit into dims 11-20.
* layer 1, head 2 (KV group 1): the retrieval (induction) head. q = current digit, k = previous digit,
  both in RoPE pairs slow enough (θ <= 1e-4) to be position-free at probe lengths, so the row of digit x
  attends to the tokens that follow an earlier x: in a passkey needle, exactly the digit being copied.
  It writes that digit to dims 21-30 and the LM head reads them, so the teacher answers passkeys.
"""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

DIGIT_IDS = list(range(17, 27))  # the demo tokenizer's "0".."9" (asserted in the tests)
CUR, BIAS, PREV, NEXT, OTHER = 0, 10, 11, 21, 31
HEAD_DIM, HALF = 32, 16
ROPE_THETA = 1e8
RETRIEVAL_HEAD = (1, 2)  # (layer, query head); its KV group is 1
PREV_TOKEN_HEAD = (0, 0)
_SLOW_DIMS = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25]  # head dims of RoPE pairs 8-15 (θ_i = 1e8^(-i/16))


def planted_teacher(vocab_size: int = 1024, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        max_position_embeddings=1024,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    D = HEAD_DIM
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, BIAS] = 1.0
        emb[:, OTHER] = 1.0  # every token has |x|^2 = 2: the constant dim then normalises to the same value
        for d, tok in enumerate(DIGIT_IDS):
            emb[tok, OTHER] = 0.0
            emb[tok, CUR + d] = 1.0
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
            attn = layer.self_attn
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                lin.weight.normal_(0.0, 0.02)
            attn.o_proj.weight.zero_()
        # normalised inputs: every position has |x|^2 = 2 over 64 dims in layer 0, so x_hat = x / sqrt(2/64)
        a0 = 1 / math.sqrt(2 / 64)
        l0 = model.model.layers[0].self_attn
        s = 4.0
        for i in range(4):  # fastest RoPE pairs (i, i + 16), θ_i = theta^(-2i/D)
            theta = ROPE_THETA ** (-2 * i / D)
            l0.k_proj.weight[i].zero_()
            l0.k_proj.weight[i + HALF].zero_()
            l0.k_proj.weight[i, BIAS] = s
            l0.q_proj.weight[i].zero_()
            l0.q_proj.weight[i + HALF].zero_()
            l0.q_proj.weight[i, BIAS] = s * math.cos(theta)
            l0.q_proj.weight[i + HALF, BIAS] = -s * math.sin(theta)
        l0.q_proj.weight[4:HALF].zero_()
        l0.q_proj.weight[HALF + 4 : D].zero_()
        l0.k_proj.weight[4:HALF].zero_()
        l0.k_proj.weight[HALF + 4 : D].zero_()
        l0.v_proj.weight[:D].zero_()
        for d in range(10):
            l0.v_proj.weight[d, CUR + d] = 1.0
            l0.o_proj.weight[PREV + d, d] = 1.0 / a0  # head 0 -> previous digit, unit size
        # layer 1: a digit position preceded by a digit has |x|^2 = 3 -> x_hat = x / sqrt(3/64)
        a1 = 1 / math.sqrt(3 / 64)
        l1 = model.model.layers[1].self_attn
        h, g = RETRIEVAL_HEAD[1], RETRIEVAL_HEAD[1] // 2
        q_rows = slice(h * D, (h + 1) * D)
        kv_rows = slice(g * D, (g + 1) * D)
        l1.q_proj.weight[q_rows].zero_()
        l1.k_proj.weight[kv_rows].zero_()
        l1.v_proj.weight[kv_rows].zero_()
        for d, dim in enumerate(_SLOW_DIMS):
            l1.q_proj.weight[h * D + dim, CUR + d] = s
            l1.k_proj.weight[g * D + dim, PREV + d] = s
            l1.v_proj.weight[g * D + d, CUR + d] = 1.0
            l1.o_proj.weight[NEXT + d, h * D + d] = 1.0 / a1
        lm = model.lm_head.weight
        lm.zero_()
        for d, tok in enumerate(DIGIT_IDS):
            lm[tok, NEXT + d] = 10.0
    return model
