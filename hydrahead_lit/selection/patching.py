"""Activation patching of KV groups in the stage-1 twin model.

For each (layer, KV group), the group's FA head outputs are replaced by their trained LA twins' outputs
(an `AttentionProbe` with `patch={layer: heads}`) and the teacher-forced answer loss on the probes is compared with the
unpatched run. A large increase means the LA twin cannot stand in for that group on retrieval: keep FA.

`patching_effects` is exact (every group, every probe) and computes what `patching_effects_reference` does,
one unpatched forward plus one forward per (layer, group) and probe batch, with less work: the patched
forward of layer l starts at layer l on the unpatched pass's recorded activations (`layer_replay`), and the
groups of one layer share one forward, each on its own copy of the probes (`AttentionProbe.patch_blocks`).
That is L forwards of on average half the layers per batch instead of L * G whole ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.data.synthetic import RetrievalSample
from hydrahead_lit.modeling.probe import AttentionProbe
from hydrahead_lit.selection.layer_replay import LayerInputs, can_replay
from hydrahead_lit.selection.probes import ProbeBatch
from hydrahead_lit.selection.retrieval import as_batches, hybrid_attentions, model_device

PATCHING_METRICS = ("nll", "accuracy")


def _row_stats(model: nn.Module, input_ids: Tensor, batch: ProbeBatch, probe: AttentionProbe | None,
               blocks: int = 1) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per block of `input_ids` (`blocks` copies of the batch): (summed answer NLL, number right) over the scored
    answer tokens, teacher-forced, float64 [blocks]."""
    out = model(input_ids=input_ids, use_cache=False, logits_to_keep=batch.rows, attention_probe=probe)
    logits = out.logits.float()
    targets = batch.targets.repeat(blocks, 1)
    mask = batch.row_mask.repeat(blocks, 1)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask  # [blocks * B, R]
    right = (logits.argmax(-1) == targets) & mask
    B = batch.input_ids.shape[0]
    return nll.double().view(blocks, B, -1).sum((1, 2)), right.double().view(blocks, B, -1).sum((1, 2))


def _twin_shape(model: nn.Module) -> tuple[torch.device, int, int, int]:
    """(device, query heads per KV group, layers L, KV groups G) of a stage-1 twin model; an error otherwise."""
    attns = hybrid_attentions(model)
    if not all(attn.twins for attn in attns):
        raise ValueError(
            "activation patching needs the stage-1 twin model (hh.convert(teacher, None, twins=True), trained "
            "in stage 1): a hybrid student has no FA output to replace in its LA heads"
        )
    gs = attns[0].num_key_value_groups
    return model_device(model), gs, len(attns), model.config.num_attention_heads // gs


@torch.no_grad()
def patching_effects(
    model: nn.Module,
    probes: Sequence[RetrievalSample] | Sequence[ProbeBatch],
    batch_size: int = 8,
    max_rows: int = 32,
) -> dict[str, Tensor]:
    """Per (layer, KV group): {"nll": mean answer NLL increase, "accuracy": answer accuracy drop}, [L, G].

    `model` is a stage-1 twin model (every head has FA and an LA twin); both effects are token-weighted
    means over every copied answer token of every probe (nats for "nll", a fraction for "accuracy").
    A forward holds at most `max_rows` rows (several groups' copies of one probe batch), at least one copy.
    The recorded layer inputs of one probe batch stay on the device: L x B x T x hidden values.
    """
    device, gs, L, G = _twin_shape(model)
    d_nll = torch.zeros(L, G, dtype=torch.float64)
    d_acc = torch.zeros(L, G, dtype=torch.float64)
    n_tokens = 0
    replay = can_replay(model)
    for batch in as_batches(probes, batch_size):
        batch = batch.to(device)
        per_forward = max(1, min(G, max_rows // batch.input_ids.shape[0]))
        inputs = LayerInputs(model)
        with inputs.record() if replay else contextlib.nullcontext():
            base_nll, base_right = (t[0].item() for t in _row_stats(model, batch.input_ids, batch, None))
        for layer in range(L):
            for g0 in range(0, G, per_forward):
                groups = range(g0, min(G, g0 + per_forward))
                blocks = len(groups)
                probe = AttentionProbe(patch_blocks={layer: [list(range(g * gs, (g + 1) * gs)) for g in groups]})
                input_ids = batch.input_ids.repeat(blocks, 1)
                with inputs.replay_from(layer, blocks) if replay and layer > 0 else contextlib.nullcontext():
                    nll, right = _row_stats(model, input_ids, batch, probe, blocks)
                d_nll[layer, g0 : g0 + blocks] += nll.cpu() - base_nll
                d_acc[layer, g0 : g0 + blocks] += base_right - right.cpu()
        n_tokens += batch.num_tokens
    return {"nll": (d_nll / n_tokens).float(), "accuracy": (d_acc / n_tokens).float()}


@torch.no_grad()
def patching_effects_reference(
    model: nn.Module, probes: Sequence[RetrievalSample] | Sequence[ProbeBatch], batch_size: int = 8
) -> dict[str, Tensor]:
    """`patching_effects` the plain way: one whole forward per (layer, KV group) and probe batch."""
    device, gs, L, G = _twin_shape(model)
    d_nll = torch.zeros(L, G, dtype=torch.float64)
    d_acc = torch.zeros(L, G, dtype=torch.float64)
    n_tokens = 0
    for batch in as_batches(probes, batch_size):
        batch = batch.to(device)
        base_nll, base_right = _row_stats(model, batch.input_ids, batch, None)
        for layer in range(L):
            for g in range(G):
                probe = AttentionProbe(patch={layer: list(range(g * gs, (g + 1) * gs))})
                nll, right = _row_stats(model, batch.input_ids, batch, probe)
                d_nll[layer, g] += (nll - base_nll).item()
                d_acc[layer, g] += (base_right - right).item()
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
