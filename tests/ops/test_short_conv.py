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


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("pattern", ["left", "right", "interleaved", "all_pads"])
def test_pads_are_skipped(pattern: str, with_state: bool) -> None:
    """With `valid`, each row gives what its real tokens alone give: outputs, zeros at pads, final state."""
    B, T, C, W = 3, 9, 5, 4
    x, weight = torch.randn(B, T, C), torch.randn(C, W)
    prev = torch.randn(B, C, W - 1) if with_state else None
    n_real = torch.tensor([9, 5, 2])
    valid = torch.arange(T)[None, :] < n_real[:, None]  # right padding
    if pattern == "left":
        valid = valid.flip(1)
    elif pattern == "interleaved":
        valid = torch.rand(B, T, generator=torch.Generator().manual_seed(0)) > 0.4
    elif pattern == "all_pads":
        valid[1] = False
    y, state = causal_short_conv(x, weight, conv_state=prev, output_final_state=True, valid=valid)
    for b in range(B):
        if not valid[b].any():
            continue  # checked below
        alone = x[b : b + 1, valid[b]]
        y_alone, s_alone = causal_short_conv(
            alone, weight, conv_state=None if prev is None else prev[b : b + 1], output_final_state=True
        )
        torch.testing.assert_close(y[b, valid[b]], y_alone[0], rtol=1e-6, atol=1e-6)
        assert (y[b, ~valid[b]] == 0).all()
        torch.testing.assert_close(state[b], s_alone[0], rtol=0, atol=0)
    if pattern == "all_pads":  # a row of pads leaves the state as it was
        expected = torch.zeros(C, W - 1) if prev is None else prev[1]
        torch.testing.assert_close(state[1], expected, rtol=0, atol=0)
        assert (y[1] == 0).all()


def test_all_valid_equals_no_mask() -> None:
    x, weight = torch.randn(2, 6, 3), torch.randn(3, 3)
    y, s = causal_short_conv(x, weight, output_final_state=True)
    y2, s2 = causal_short_conv(x, weight, output_final_state=True, valid=torch.ones(2, 6, dtype=torch.bool))
    torch.testing.assert_close(y2, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s2, s, rtol=0, atol=0)


def test_pad_gradients_are_zero() -> None:
    x = torch.randn(1, 6, 3, requires_grad=True)
    valid = torch.tensor([[False, True, True, False, True, True]])
    y, _ = causal_short_conv(x, torch.randn(3, 3), valid=valid)
    y.sum().backward()
    assert (x.grad[0, ~valid[0]] == 0).all() and (x.grad[0, valid[0]] != 0).any()


def test_bad_valid_shape_raises() -> None:
    with pytest.raises(ValueError, match="valid must be"):
        causal_short_conv(torch.zeros(1, 3, 2), torch.zeros(2, 2), valid=torch.ones(1, 4, dtype=torch.bool))
