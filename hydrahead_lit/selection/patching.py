"""Activation patching of KV groups in the stage-1 twin model.

For each (layer, KV group), the group's FA head outputs are replaced by their trained LA twins' outputs
(an `AttentionProbe` with `patch={layer: heads}`) and the teacher-forced answer loss on the probes is compared with the
unpatched run. A large increase means the LA twin cannot stand in for that group on retrieval: keep FA.
Cost: one unpatched forward plus L * G patched forwards per probe batch, exact (no subsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.data.synthetic import RetrievalSample
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.selection.probes import ProbeBatch
from hydrahead_lit.selection.retrieval import as_batches, hybrid_attentions, model_device

PATCHING_METRICS = ("nll", "accuracy")


def _answer_stats(
    model: nn.Module, batch: ProbeBatch, patch: dict[int, list[int]] | None = None
) -> tuple[float, float]:
    """(summed NLL, number right) over the batch's scored answer tokens, teacher-forced, with the FA outputs
    of `patch` ({layer: heads}) replaced by their LA twins'."""
    probe = AttentionProbe(patch=patch) if patch else None
    out = model(input_ids=batch.input_ids, use_cache=False, logits_to_keep=batch.rows, attention_probe=probe)
    logits = out.logits.float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # [B, R]
    right = logits.argmax(-1) == batch.targets
    return float(nll[batch.row_mask].sum()), float(right[batch.row_mask].sum())


@torch.no_grad()
def patching_effects(
    model: nn.Module, probes: Sequence[RetrievalSample] | Sequence[ProbeBatch], batch_size: int = 8
) -> dict[str, Tensor]:
    """Per (layer, KV group): {"nll": mean answer NLL increase, "accuracy": answer accuracy drop}, [L, G].

    `model` is a stage-1 twin model (every head has FA and an LA twin); both effects are token-weighted
    means over every copied answer token of every probe (nats for "nll", a fraction for "accuracy").
    """
    attns = hybrid_attentions(model)
    if not all(attn.twins for attn in attns):
        raise ValueError(
            "activation patching needs the stage-1 twin model (hh.convert(teacher, None, twins=True), trained "
            "in stage 1): a hybrid student has no FA output to replace in its LA heads"
        )
    device = model_device(model)
    gs = attns[0].num_key_value_groups
    L, G = len(attns), model.config.num_attention_heads // gs
    d_nll = torch.zeros(L, G, dtype=torch.float64)
    d_acc = torch.zeros(L, G, dtype=torch.float64)
    n_tokens = 0
    for batch in as_batches(probes, batch_size):
        batch = batch.to(device)
        base_nll, base_right = _answer_stats(model, batch)
        for layer in range(L):
            for g in range(G):
                nll, right = _answer_stats(model, batch, {layer: list(range(g * gs, (g + 1) * gs))})
                d_nll[layer, g] += nll - base_nll
                d_acc[layer, g] += base_right - right
        n_tokens += batch.num_tokens
    return {"nll": (d_nll / n_tokens).float(), "accuracy": (d_acc / n_tokens).float()}


def patching_scores(
    model: nn.Module,
    probes: Sequence[RetrievalSample] | Sequence[ProbeBatch],
    metric: str = "nll",
    batch_size: int = 8,
) -> Tensor:
    """[L, G] patching effect by `metric` ("nll": answer NLL increase, "accuracy": answer accuracy drop)."""
    if metric not in PATCHING_METRICS:
        raise ValueError(f"patching metric must be one of {PATCHING_METRICS}, got {metric!r}")
    return patching_effects(model, probes, batch_size)[metric]
