"""The retrieval score of Wu et al. 2024 ("Retrieval Head Mechanistically Explains Long-Context
Factuality", arXiv 2404.15574), teacher-forced on synthetic probes.

While the model produces answer token ``w`` (the query is the row ``p - 1`` that predicts it), a head
*retrieves* when its top-1 attention lands inside the needle ``w`` is copied from on a token equal to
``w`` (``match="token"``, Wu et al.'s rule; a distractor needle holding the same token does not count)
or exactly on the position ``w`` is copied from (``match="position"``). A head's score is the fraction
of copied answer tokens it retrieves, averaged over probes (Wu et al. divide by the needle's length;
docs/selection.md lists every difference).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hydrahead_lit.data.synthetic import RetrievalSample
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.modeling.attention import HybridAttention
from hydrahead_lit.modeling.plan import HeadPlan
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.modeling.student import is_student
from hydrahead_lit.selection.probes import ProbeBatch, batch_probes

GROUP_REDUCTIONS = ("max", "mean")


def hybrid_attentions(model: nn.Module) -> list[HybridAttention]:
    """Each layer's HybridAttention; a clear error for a plain `transformers` model."""
    if not is_student(model):
        raise ValueError(
            f"{type(model).__name__} is not a HydraHead model: head scores read the probes of HybridAttention. "
            "Score a teacher through `probe_model(teacher)` (an all-FA student, same function) or score the "
            "stage-1 twin model `hh.convert(teacher, None, twins=True)`"
        )
    return [layer.self_attn for layer in decoder_layers(model)]


def probe_model(teacher: nn.Module) -> nn.Module:
    """An all-FA HydraHead copy of `teacher`: computes the teacher's function and exposes its attention rows."""
    from hydrahead_lit.modeling.convert import convert

    return convert(teacher, HeadPlan.all_fa(teacher.config))


def as_batches(probes: Sequence[RetrievalSample] | Sequence[ProbeBatch], batch_size: int = 8) -> list[ProbeBatch]:
    if probes and all(isinstance(p, ProbeBatch) for p in probes):
        return list(probes)
    return batch_probes(probes, batch_size)  # type: ignore[arg-type]


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters())
    return p.device if not hasattr(p, "to_local") else p.to_local().device  # FSDP2 DTensor parameters


def fa_head_indices(model: nn.Module, layer: int, attn: HybridAttention) -> list[int]:
    """Original head index of each FA head of `layer` (heads are permuted at conversion; twins keep order)."""
    return model.head_plan.head_order(layer)[: attn.num_fa_heads]


@torch.no_grad()
def retrieval_scores(
    model: nn.Module,
    probes: Sequence[RetrievalSample] | Sequence[ProbeBatch],
    match: str = "token",
    only_correct: bool = False,
    batch_size: int = 8,
) -> Tensor:
    """Per (layer, original query head) retrieval score in [0, 1], shape [L, H] (float32, on CPU).

    Heads without an FA path (LA heads of a hybrid student) get NaN. With `only_correct`, only probes whose
    teacher-forced greedy answer is entirely right count (Wu et al. score successful retrievals only);
    when no probe is right, all probes count and a warning says so.
    """
    if match not in ("token", "position"):
        raise ValueError(f"match must be 'token' or 'position', got {match!r}")
    attns = hybrid_attentions(model)
    device = model_device(model)
    n_heads = model.config.num_attention_heads
    L = len(attns)
    total = torch.zeros(L, n_heads, dtype=torch.float64)
    total_correct = torch.zeros(L, n_heads, dtype=torch.float64)
    n_samples = n_correct = 0
    for batch in as_batches(probes, batch_size):
        batch = batch.to(device)
        probe = AttentionProbe(rows=batch.rows)
        logits_to_keep = batch.rows if only_correct else 1
        out = model(input_ids=batch.input_ids, use_cache=False, logits_to_keep=logits_to_keep, attention_probe=probe)
        per_layer = [_retrieved_fraction(probe.attention.get(i), batch, match) for i in range(L)]  # [B, Hfa] each
        del probe  # every layer's [B, Hfa, R, T] rows: free them before the next batch
        B = batch.input_ids.shape[0]
        correct = torch.ones(B, dtype=torch.bool, device=device)
        if only_correct:
            right = (out.logits.argmax(-1) == batch.targets) | ~batch.row_mask
            correct = right.all(-1)
        for layer, (attn, frac) in enumerate(zip(attns, per_layer)):
            idx = fa_head_indices(model, layer, attn)
            total[layer, idx] += frac.sum(0).double().cpu()
            total_correct[layer, idx] += frac[correct].sum(0).double().cpu()
        n_samples += B
        n_correct += int(correct.sum())
    if only_correct and n_correct == 0:
        warnings.warn("no probe was answered correctly: the retrieval score averages over all probes", stacklevel=2)
    score = total_correct / n_correct if only_correct and n_correct else total / n_samples
    for layer, attn in enumerate(attns):
        fa = set(fa_head_indices(model, layer, attn))
        score[layer, [h for h in range(n_heads) if h not in fa]] = float("nan")
    return score.float()


def _retrieved_fraction(probe_attn: Tensor | None, batch: ProbeBatch, match: str) -> Tensor:
    """[B, Hfa] fraction of each sample's scored answer tokens that each FA head retrieves."""
    B = batch.input_ids.shape[0]
    if probe_attn is None:  # a layer without FA heads records nothing
        return torch.zeros(B, 0, device=batch.input_ids.device)
    top = probe_attn.argmax(-1)  # [B, Hfa, R]
    Hfa, R = top.shape[1], top.shape[2]
    flat = top.reshape(B, Hfa * R)
    if match == "token":  # the same token, inside the needle being retrieved (not a distractor)
        hit = batch.input_ids.gather(1, flat).view(B, Hfa, R) == batch.targets[:, None, :]
        hit &= (top >= batch.needle_start[:, None, :]) & (top < batch.needle_end[:, None, :])
    else:
        hit = top == batch.sources[:, None, :]
    hit &= batch.row_mask[:, None, :]
    return hit.sum(-1).float() / batch.row_mask.sum(-1, keepdim=True).clamp(min=1).float()


def group_scores(head_scores: Tensor, group_size: int, reduce: str = "max") -> Tensor:
    """[L, H] per query head -> [L, G] per KV group (max: the group keeps FA if any of its heads retrieves)."""
    if reduce not in GROUP_REDUCTIONS:
        raise ValueError(f"group reduction must be one of {GROUP_REDUCTIONS}, got {reduce!r}")
    L, H = head_scores.shape
    if group_size < 1 or H % group_size:
        raise ValueError(f"{H} heads do not split into KV groups of {group_size}")
    grouped = head_scores.reshape(L, H // group_size, group_size)
    return grouped.amax(-1) if reduce == "max" else grouped.mean(-1)
