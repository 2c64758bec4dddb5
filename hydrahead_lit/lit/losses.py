"""Training losses of the three stages (pure PyTorch: no Lightning here).

- `head_alignment_loss` (stage 1): per-head MSE between each LA twin and its teacher head, normalised
  by the teacher head's output variance so that every (layer, head) weighs the same.
- `chunked_logit_losses` (stages 2 and 3): next-token cross entropy and/or KL(teacher || student)
  computed from final hidden states, a chunk of tokens at a time, recomputing each chunk's logits in
  the backward pass. Neither model's full-vocabulary logits of the whole batch are ever materialised.
- `hidden_state_loss` (optional stage-2 term): normalised MSE between student and teacher hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]


def head_alignment_error(la: Tensor, fa: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Per-head normalised MSE, [H]: mean((la - fa)^2) / var(fa), over batch, time and channels.

    la, fa: [B, T, H, D] (fa is the teacher head's output, a constant target); mask: [B, T] bool.
    Dividing by the teacher head's variance makes 1.0 mean "no better than predicting the mean", for
    every head whatever its scale; that is our choice (the paper does not give its loss).
    """
    la, fa = la.float(), fa.float().detach()
    if mask is not None:
        m = mask.to(la.dtype)[:, :, None, None]
        n = m.sum().clamp_min(1.0) * la.shape[-1]
        mse = ((la - fa).pow(2) * m).sum((0, 1, 3)) / n
        mean = (fa * m).sum((0, 1, 3), keepdim=True) / n
        var = ((fa - mean).pow(2) * m).sum((0, 1, 3)) / n
    else:
        mse = (la - fa).pow(2).mean((0, 1, 3))
        var = fa.var((0, 1, 3), unbiased=False)
    return mse / (var + eps)


def head_alignment_loss(
    pairs: Sequence[tuple[Tensor, Tensor]], mask: Tensor | None = None, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Mean over layers and heads of `head_alignment_error`; also returns the [L, H] errors (detached).

    pairs: one (fa_out, la_out) per layer, each [B, T, H, D], as `AttentionProbe.alignment_pairs` returns them.
    """
    if not pairs:
        raise ValueError("no alignment pairs: the model has no twin attention layer (is it a stage-1 twin student?)")
    errors = torch.stack([head_alignment_error(la, fa, mask, eps) for fa, la in pairs])
    return errors.mean(), errors.detach()


def check_logit_loss_args(
    temperature: float, chunk_size: int, teacher_hidden: Tensor | None, teacher_head: Head | None
) -> None:
    """ValueError for arguments no logit loss can use."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("teacher_hidden and teacher_head go together")


def counted_tokens(h: Tensor, targets: Tensor | None, mask: Tensor | None) -> tuple[Tensor | None, Tensor]:
    """(flat targets with ignored ids as 0, or None; flat bool [N] of the tokens the losses count):
    a token counts where `mask` is True and its target id is not negative."""
    valid = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
    if mask is not None:
        valid = valid & mask.reshape(-1).to(device=h.device, dtype=torch.bool)
    if targets is None:
        return None, valid
    tgt = targets.reshape(-1).to(h.device)
    return tgt.clamp_min(0), valid & (tgt >= 0)


def _chunk_terms(
    h_s: Tensor,
    targets: Tensor,
    weights: Tensor,
    h_t: Tensor | None,
    student_head: Head,
    teacher_head: Head | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Weighted sums of CE and KL over one chunk of tokens (the only place logits exist)."""
    logits = student_head(h_s).float()
    ce = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    if h_t is None:
        return ce, logits.new_zeros(())
    with torch.no_grad():
        t_logp = F.log_softmax(teacher_head(h_t).float() / temperature, dim=-1)
    s_logp = F.log_softmax(logits / temperature, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return ce, (kl * weights).sum() * temperature**2


def chunked_logit_losses(
    student_hidden: Tensor,
    student_head: Head,
    targets: Tensor | None = None,
    mask: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    recompute: bool = True,
) -> tuple[Tensor, Tensor]:
    """(cross entropy, KL(teacher || student) * T^2), each a mean over the unmasked tokens.

    student_hidden: [B, T, d] final hidden states (after the final norm) of the student; teacher_hidden
    likewise (no gradient). `student_head` / `teacher_head` map hidden states to logits (the lm_head
    modules). targets: [B, T] next-token ids (positions with negative ids or mask False are ignored);
    when None only the KL is computed. With `recompute`, each chunk's logits are recomputed in the
    backward pass instead of kept, so memory holds one chunk of logits at a time.
    """
    check_logit_loss_args(temperature, chunk_size, teacher_hidden, teacher_head)
    d = student_hidden.shape[-1]
    h_s = student_hidden.reshape(-1, d)
    h_t = None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    tgt, valid = counted_tokens(h_s, targets, mask)
    if tgt is None:
        tgt = torch.zeros(h_s.shape[0], dtype=torch.long, device=h_s.device)
    weights = valid.float()
    count = weights.sum().clamp_min(1.0)
    ce_sum = h_s.new_zeros((), dtype=torch.float32)
    kl_sum = h_s.new_zeros((), dtype=torch.float32)
    for start in range(0, h_s.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        t_chunk = None if h_t is None else h_t[sl]
        args = (h_s[sl], tgt[sl], weights[sl], t_chunk, student_head, teacher_head, temperature)
        if recompute and torch.is_grad_enabled() and h_s.requires_grad:
            ce, kl = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            ce, kl = _chunk_terms(*args)
        ce_sum = ce_sum + ce
        kl_sum = kl_sum + kl
    ce = ce_sum / count if targets is not None else ce_sum.detach() * 0.0
    return ce, kl_sum / count


def hidden_state_loss(
    student_states: Sequence[Tensor], teacher_states: Sequence[Tensor], mask: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Mean over layers of MSE(student, teacher) / mean(teacher^2): scale-free across layers."""
    if len(student_states) != len(teacher_states):
        raise ValueError(f"{len(student_states)} student hidden states vs {len(teacher_states)} teacher ones")
    terms = []
    for s, t in zip(student_states, teacher_states):
        s, t = s.float(), t.float().detach()
        if mask is None:
            terms.append((s - t).pow(2).mean() / (t.pow(2).mean() + eps))
        else:
            m = mask.to(s.dtype)[..., None]
            terms.append(((s - t).pow(2) * m).sum() / ((t.pow(2) * m).sum() + eps))
    return torch.stack(terms).mean()
