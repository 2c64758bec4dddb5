import pytest
import torch
import torch.nn.functional as F

from hydrahead_lit.lit.losses import (
    chunked_logit_losses,
    head_alignment_error,
    head_alignment_loss,
    hidden_state_loss,
)


def _full_kl(h_s, h_t, w_s, w_t, temperature, mask):
    t_logp = F.log_softmax(h_t @ w_t.T / temperature, -1)
    s_logp = F.log_softmax(h_s @ w_s.T / temperature, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum() * temperature**2


def _full_ce(h_s, w_s, targets, mask):
    ce = F.cross_entropy((h_s @ w_s.T).flatten(0, 1), targets.flatten(), reduction="none").view_as(mask)
    return (ce * mask).sum() / mask.sum()


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 64])
@pytest.mark.parametrize("recompute", [True, False])
def test_chunked_losses_equal_unchunked(chunk_size: int, recompute: bool) -> None:
    B, T, d, V, temp = 2, 9, 8, 31, 2.0
    h_s = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(B, T, d, dtype=torch.float64)
    w_s = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    w_t = torch.randn(V, d, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T))
    mask = torch.rand(B, T) > 0.3
    ce, kl = chunked_logit_losses(
        h_s, lambda h: h @ w_s.T, targets, mask, h_t, lambda h: h @ w_t.T, temp, chunk_size, recompute
    )
    (ce + kl).backward()
    g_h, g_w = h_s.grad.clone(), w_s.grad.clone()
    h_s.grad = w_s.grad = None
    m = mask.double()
    ref_kl = _full_kl(h_s, h_t, w_s, w_t, temp, m)
    ref_ce = _full_ce(h_s, w_s, targets, m)
    (ref_ce + ref_kl).backward()
    # The chunked path computes logits in float32 (as in bf16 training): 1e-6 relative is float32 rounding.
    torch.testing.assert_close(kl.double(), ref_kl.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ce.double(), ref_ce.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_h, h_s.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, w_s.grad, rtol=1e-5, atol=1e-6)


def test_kl_is_zero_for_identical_models_and_positive_otherwise() -> None:
    h = torch.randn(2, 5, 4)
    w = torch.randn(11, 4)
    _, kl = chunked_logit_losses(h, lambda x: x @ w.T, None, None, h, lambda x: x @ w.T, chunk_size=3)
    assert kl.abs() < 1e-6  # float32 rounding of log-softmax differences
    _, kl2 = chunked_logit_losses(h, lambda x: x @ w.T, None, None, h.flip(0), lambda x: x @ w.T, chunk_size=3)
    assert kl2 > 1e-3


def test_chunked_losses_reject_bad_arguments() -> None:
    h = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logit_losses(h, lambda x: x, None, None, h, lambda x: x, temperature=0.0)
    with pytest.raises(ValueError, match="go together"):
        chunked_logit_losses(h, lambda x: x, None, None, h, None)


def test_head_alignment_error_is_scale_free_and_masked() -> None:
    fa = torch.randn(2, 6, 3, 4)
    fa[:, :, 1] *= 100.0  # a loud head must not dominate
    la = fa + 0.1 * fa.std((0, 1, 3), keepdim=True) * torch.randn_like(fa)
    err = head_alignment_error(la, fa)
    assert err.shape == (3,)
    torch.testing.assert_close(err, torch.full((3,), 0.01), rtol=0.5, atol=0)  # noise power 1% of the signal's
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, -1] = False
    la2 = la.clone()
    la2[:, -1] += 1e4  # garbage on masked positions is ignored
    torch.testing.assert_close(head_alignment_error(la2, fa, mask), head_alignment_error(la[:, :-1], fa[:, :-1]))


def test_head_alignment_loss_averages_layers_and_only_grads_la() -> None:
    fa = torch.randn(1, 4, 2, 3, requires_grad=True)
    la = torch.zeros(1, 4, 2, 3, requires_grad=True)
    loss, errors = head_alignment_loss([(fa, la), (fa, la)])
    assert errors.shape == (2, 2) and not errors.requires_grad
    torch.testing.assert_close(loss, errors.mean())
    loss.backward()
    assert fa.grad is None and la.grad is not None
    with pytest.raises(ValueError, match="twin"):
        head_alignment_loss([])


def test_hidden_state_loss() -> None:
    t = [torch.randn(2, 3, 4) for _ in range(2)]
    assert hidden_state_loss(t, t) == 0
    assert hidden_state_loss([x * 0 for x in t], t).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="hidden states"):
        hidden_state_loss(t[:1], t)
