"""Depthwise causal short convolution over time, with a carried state for decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_short_conv"]


def causal_short_conv(
    x: Tensor,
    weight: Tensor,
    conv_state: Tensor | None = None,
    output_final_state: bool = False,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Depthwise causal conv over time: x ``[B, T, C]``, weight ``[C, W]``; no activation (caller decides).

    ``conv_state`` ``[B, C, W-1]`` holds the last ``W - 1`` inputs of the previous call (decoding).

    ``y[:, t, c] = sum_i weight[c, i] * x[:, t - (W - 1) + i, c]``, where inputs before the start
    come from ``conv_state`` (zeros when it is None). The returned state holds the last ``W - 1``
    inputs, oldest first, in ``x``'s dtype, so feeding it to the next call continues the sequence.

    ``valid`` ``[B, T]`` (bool, optional) marks real tokens; pad positions (False) are skipped as if
    absent: each real input sees only the real inputs before it (and ``conv_state``), the state is taken
    after the last real input, and pad positions output zeros. Any pattern of pads is exact (left,
    right or interleaved): the real inputs of each row are moved to its front before the conv.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C]; got {tuple(x.shape)}")
    B, T, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C or weight.shape[1] < 1:
        raise ValueError(f"weight must be [C, W] = [{C}, W>=1] to match x; got {tuple(weight.shape)}")
    W = weight.shape[1]
    if conv_state is not None and conv_state.shape != (B, C, W - 1):
        raise ValueError(f"conv_state must be [B, C, W-1] = [{B}, {C}, {W - 1}]; got {tuple(conv_state.shape)}")
    if valid is not None:
        if valid.shape != (B, T):
            raise ValueError(f"valid must be [B, T] = [{B}, {T}] to match x; got {tuple(valid.shape)}")
        return _conv_skipping_pads(x, weight, conv_state, output_final_state, valid.to(torch.bool))

    xt = x.transpose(1, 2)  # [B, C, T]: the layout conv1d wants
    if conv_state is None:
        padded = F.pad(xt, (W - 1, 0))
    else:
        padded = torch.cat([conv_state.to(x.dtype), xt], dim=-1)
    y = F.conv1d(padded, weight.to(x.dtype).unsqueeze(1), groups=C)  # [B, C, T]
    final = None
    if output_final_state:
        # The last W-1 inputs (fewer than W-1 new ones keep part of the old state), copied: a slice would
        # keep the whole padded buffer alive in the cache (prefill length, not W-1, positions).
        final = padded[:, :, padded.shape[-1] - (W - 1) :].clone(memory_format=torch.contiguous_format)
    return y.transpose(1, 2), final


def _conv_skipping_pads(
    x: Tensor, weight: Tensor, conv_state: Tensor | None, output_final_state: bool, valid: Tensor
) -> tuple[Tensor, Tensor | None]:
    """`causal_short_conv` with pads skipped: real inputs packed to the front of each row (stable order),
    convolved (the pads trailing them cannot reach them: the conv is causal), and scattered back."""
    B, T, C = x.shape
    W = weight.shape[1]
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # real positions first, in order
    index = order[:, :, None].expand(B, T, C)
    packed = x.gather(1, index)
    y_packed, _ = causal_short_conv(packed, weight, conv_state)
    y = torch.zeros_like(y_packed).scatter(1, index, y_packed).masked_fill(~valid[:, :, None], 0.0)
    final = None
    if output_final_state:
        # [old state | packed inputs]: the W-1 positions ending at the last real input of each row.
        prev = x.new_zeros(B, C, W - 1) if conv_state is None else conv_state.to(x.dtype)
        buffer = torch.cat([prev, packed.transpose(1, 2)], dim=-1)
        start = valid.sum(1, keepdim=True)  # [B, 1]: buffer index of the oldest kept input
        idx = start + torch.arange(W - 1, device=x.device)
        final = buffer.gather(2, idx[:, None, :].expand(B, C, W - 1)).contiguous()
    return y, final
