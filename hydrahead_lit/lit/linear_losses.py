"""The logit losses of stages 2 and 3 with their gradients taken in the forward pass (pure PyTorch).

`chunked_logit_losses` (losses.py) is the reference: autograd through each chunk, with the chunk
recomputed in the backward pass. Per chunk of tokens that is six vocabulary GEMMs (teacher and student
logits twice, two for the student's backward) and the float32 softmax passes twice. Here each chunk is
done once: its logits, the losses, and at once the gradient of the weighted loss with respect to the
logits, which is folded straight into the gradients of the hidden states and of the head's weight
(four GEMMs, and at temperature 1 one softmax pass per model). The backward pass only scales them.

The price is that the loss weights must be known in the forward pass (`ce_weight`, `kd_weight`), so one
differentiable loss comes back, with CE and KL beside it for logging; and the head must be a plain
`nn.Linear` (its weight not a sharded DTensor). `logit_losses` picks this path when it can and the
reference otherwise.

Gradients, for one token with weight w (1 / the number of counted tokens, 0 when masked):
d CE / d s = softmax(s) - onehot(y), and d (tau^2 KL(p_t || p_s)) / d s = tau (softmax(s / tau) - p_t).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.lit.losses import Head, check_logit_loss_args, chunked_logit_losses, counted_tokens


@dataclass(frozen=True)
class _Terms:
    """What the losses need besides the student's hidden states and head: flat targets (ignored ids as 0)
    or None, per-token weights w, the teacher's flat hidden states and head or None, and the weights."""

    targets: Tensor | None
    w: Tensor
    h_t: Tensor | None
    teacher_head: Head | None
    tau: float
    ce_weight: float
    kd_weight: float
    chunk_size: int


def _chunk(h: Tensor, weight: Tensor, bias: Tensor | None, terms: _Terms, sl: slice, with_grad: bool):
    """(weighted CE sum, weighted KL sum * tau^2, d loss / d logits in float32 or None) of the tokens `sl`."""
    tau, w = terms.tau, terms.w[sl]
    targets = None if terms.targets is None else terms.targets[sl]
    s = F.linear(h[sl], weight, bias).float()  # the GEMM in the model's dtype, as the head runs it
    ce = kl = s.new_zeros(())
    logp = torch.log_softmax(s, dim=-1) if targets is not None or (terms.h_t is not None and tau == 1.0) else None
    if targets is not None:
        ce = -(logp.gather(1, targets[:, None]).squeeze(1) * w).sum()
    p_t = s_logp_tau = None
    if terms.h_t is not None:
        with torch.no_grad():
            t_logp = torch.log_softmax(terms.teacher_head(terms.h_t[sl]).float() / tau, dim=-1)
        s_logp_tau = logp if tau == 1.0 else torch.log_softmax(s / tau, dim=-1)
        p_t = t_logp.exp()
        kl = ((p_t * (t_logp - s_logp_tau)).sum(-1) * w).sum() * tau**2
        del t_logp
    del s
    ce_on = targets is not None and terms.ce_weight != 0.0
    kd_on = terms.h_t is not None and terms.kd_weight != 0.0
    if not with_grad or not (ce_on or kd_on):
        return ce, kl, None
    # d loss / d s = ce_weight w (p_s - onehot) + kd_weight tau w (p_s_tau - p_t); at tau = 1 one softmax serves both.
    grad = None
    if ce_on:
        coeff = terms.ce_weight + (terms.kd_weight if kd_on and tau == 1.0 else 0.0)
        grad = logp.exp().mul_(coeff * w[:, None])
        grad.scatter_add_(1, targets[:, None], (-terms.ce_weight * w)[:, None])
    if kd_on:
        if grad is None or tau != 1.0:
            term = s_logp_tau.exp().mul_(terms.kd_weight * tau * w[:, None])
            grad = term if grad is None else grad.add_(term)
        grad.sub_(p_t.mul_(terms.kd_weight * tau * w[:, None]))
    return ce, kl, grad


def _run_chunks(h: Tensor, weight: Tensor, bias: Tensor | None, terms: _Terms, need: Sequence[bool]):
    """(CE, KL, d loss / d h, d loss / d weight in float32, d loss / d bias in float32) over all chunks;
    a gradient is None where `need` (for h, weight, bias) says it is not wanted."""
    need_h, need_w, need_b = need
    grad_h = torch.zeros_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
    ce_sum = h.new_zeros((), dtype=torch.float32)
    kl_sum = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], terms.chunk_size):
        sl = slice(start, start + terms.chunk_size)
        ce, kl, grad = _chunk(h, weight, bias, terms, sl, with_grad=any(need))
        ce_sum += ce
        kl_sum += kl
        if grad is None:
            continue
        if grad_b is not None:
            grad_b += grad.sum(0)
        grad = grad.to(weight.dtype)  # the backward GEMMs in the model's dtype, as autograd runs them
        if grad_h is not None:
            grad_h[sl] = grad @ weight
        if grad_w is not None:
            grad_w += (grad.T @ h[sl]).float()  # accumulated in float32 over the chunks
    return ce_sum, kl_sum, grad_h, grad_w, grad_b


class _LinearLogitLosses(torch.autograd.Function):
    """Forward: the chunked losses and their gradients; backward: those gradients times the incoming one."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, terms: _Terms):  # type: ignore[override]
        ce, kl, grad_h, grad_w, grad_b = _run_chunks(h, weight, bias, terms, ctx.needs_input_grad[:3])
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(ce, kl)
        return terms.ce_weight * ce + terms.kd_weight * kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_ce: Tensor, _grad_kl: Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        out_h = None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype)
        out_w = None if grad_w is None else (grad_w * grad_loss).to(w_dtype)
        out_b = None if grad_b is None else (grad_b * grad_loss).to(b_dtype)
        return out_h, out_w, out_b, None


def _plain_linear(head: object) -> nn.Linear | None:
    """`head` when it is an `nn.Linear` whose parameters are plain tensors (not sharded DTensors)."""
    if not isinstance(head, nn.Linear):
        return None
    if any(type(p).__name__ == "DTensor" for p in head.parameters()):
        return None
    return head


def logit_losses(
    student_hidden: Tensor,
    student_head: Head,
    targets: Tensor | None = None,
    mask: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    fused: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(ce_weight * CE + kd_weight * KL, CE, KL): the loss with its gradient, the two terms without.

    CE and KL(teacher || student) * temperature^2 are means over the counted tokens, as in
    `chunked_logit_losses` (same arguments). With `fused` and a plain `nn.Linear` student head the
    gradients are computed chunk by chunk in the forward pass (module docstring); otherwise, or with
    `fused=False`, the reference runs and the loss is composed from its terms.
    """
    check_logit_loss_args(temperature, chunk_size, teacher_hidden, teacher_head)
    if targets is None and ce_weight != 0.0:
        raise ValueError("ce_weight must be 0 without targets (there is no cross entropy to weigh)")
    if teacher_hidden is None and kd_weight != 0.0:
        raise ValueError("kd_weight must be 0 without a teacher (there is no KL to weigh)")
    linear = _plain_linear(student_head) if fused else None
    if linear is None:
        ce, kl = chunked_logit_losses(
            student_hidden, student_head, targets, mask, teacher_hidden, teacher_head, temperature, chunk_size
        )
        return ce_weight * ce + kd_weight * kl, ce.detach(), kl.detach()
    d = student_hidden.shape[-1]
    h = student_hidden.reshape(-1, d)
    tgt, valid = counted_tokens(h, targets, mask)
    w = valid.float() / valid.sum().clamp_min(1)
    h_t = None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    terms = _Terms(tgt, w, h_t, teacher_head, float(temperature), float(ce_weight), float(kd_weight), chunk_size)
    if torch.is_grad_enabled():
        return _LinearLogitLosses.apply(h, linear.weight, linear.bias, terms)
    ce, kl, *_ = _run_chunks(h, linear.weight, linear.bias, terms, (False, False, False))
    return terms.ce_weight * ce + terms.kd_weight * kl, ce, kl
