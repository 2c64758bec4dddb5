"""Causal depthwise short convolution: definition, streaming with a carried state, validation."""

from __future__ import annotations

import pytest
import torch

from hydrahead_lit.ops.short_conv import causal_short_conv


def _by_definition(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_i w[i] * x[t - (W-1) + i], inputs before the start being zero."""
    B, T, C = x.shape
    W = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(T):
        for i in range(W):
            src = t - (W - 1) + i
            if src >= 0:
                y[:, t] += weight[:, i] * x[:, src]
    return y


@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 3, 11])
def test_matches_definition(T: int, W: int) -> None:
    x, weight = torch.randn(2, T, 6), torch.randn(6, W)
    y, state = causal_short_conv(x, weight, output_final_state=True)
    # fp32 sums of <= 4 products: only rounding differs.
    torch.testing.assert_close(y, _by_definition(x, weight), rtol=1e-6, atol=1e-6)
    assert state.shape == (2, 6, W - 1)


def test_state_holds_last_inputs_zero_filled() -> None:
    x = torch.randn(1, 2, 3)
    _, state = causal_short_conv(x, torch.randn(3, 4), output_final_state=True)
    # W - 1 = 3 slots, only 2 inputs seen: the oldest slot is the zero padding.
    torch.testing.assert_close(state, torch.cat([torch.zeros(1, 3, 1), x.transpose(1, 2)], dim=-1))


@pytest.mark.parametrize("split", [1, 2, 5])
def test_streaming_equals_full_call(split: int) -> None:
    """Token by token (and in uneven pieces), carrying conv_state, equals one call."""
    x, weight = torch.randn(2, 10, 5), torch.randn(5, 4)
    y_full, s_full = causal_short_conv(x, weight, output_final_state=True)
    state, pieces = None, []
    for lo in range(0, 10, split):
        y, state = causal_short_conv(x[:, lo : lo + split], weight, conv_state=state, output_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), y_full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, s_full, rtol=0, atol=0)


def test_bf16_and_gradients() -> None:
    x = torch.randn(1, 7, 4, requires_grad=True)
    weight = torch.randn(4, 3, requires_grad=True)
    y, _ = causal_short_conv(x.bfloat16(), weight)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and weight.grad is not None and weight.grad.abs().sum() > 0


def test_no_state_unless_asked() -> None:
    assert causal_short_conv(torch.randn(1, 3, 2), torch.randn(2, 2))[1] is None


@pytest.mark.parametrize(
    "x, weight, state, match",
    [
        (torch.zeros(2, 3), torch.zeros(3, 2), None, "x must be"),
        (torch.zeros(1, 3, 4), torch.zeros(5, 2), None, "weight must be"),
        (torch.zeros(1, 3, 4), torch.zeros(4, 3), torch.zeros(1, 4, 3), "conv_state must be"),
    ],
)
def test_bad_shapes_raise(x, weight, state, match) -> None:
    with pytest.raises(ValueError, match=match):
        causal_short_conv(x, weight, conv_state=state)


@pytest.mark.parametrize("with_state", [False, True])
def test_state_is_a_copy_of_the_last_inputs(with_state: bool) -> None:
    """The state owns W-1 positions, not a view of the whole padded buffer (it lives in the cache)."""
    x, weight = torch.randn(2, 50, 6), torch.randn(6, 4)
    prev = torch.randn(2, 6, 3) if with_state else None
    _, state = causal_short_conv(x, weight, conv_state=prev, output_final_state=True)
    assert state.is_contiguous()
    assert state.untyped_storage().nbytes() == state.numel() * state.element_size()
    torch.testing.assert_close(state, x[:, -3:].transpose(1, 2), rtol=0, atol=0)
