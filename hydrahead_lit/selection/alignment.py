"""The stage-1 alignment error as a head score: heads whose LA twin fits worst most need to keep FA."""

from __future__ import annotations

import torch
from torch import Tensor


def alignment_group_scores(alignment_error: Tensor, num_layers: int, num_kv_groups: int) -> Tensor:
    """[L, H] per-head stage-1 alignment error (normalised MSE, running mean) -> [L, G] mean per KV group."""
    err = torch.as_tensor(alignment_error).detach().float().cpu()
    if err.dim() != 2 or err.shape[0] != num_layers or err.shape[1] % num_kv_groups:
        raise ValueError(
            f"alignment_error must be [num_layers={num_layers}, num_heads] with heads a multiple of "
            f"{num_kv_groups} KV groups, got shape {tuple(err.shape)}"
        )
    if not torch.isfinite(err).all():
        raise ValueError("alignment_error has NaN/inf entries: was stage 1 run (and did its loss stay finite)?")
    return err.reshape(num_layers, num_kv_groups, -1).mean(-1)
