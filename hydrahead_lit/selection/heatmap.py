"""Layer-by-group heat maps of head scores with the chosen FA groups marked (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hydrahead_lit.modeling.plan import HeadPlan


def heatmap_figure(scores: dict[str, Tensor], plan: HeadPlan, title: str = "") -> Any:
    """One panel per score ([L, G], rows = layers, columns = KV groups); FA groups of `plan` boxed."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        matplotlib.use("Agg")  # no display on training nodes; a figure is only ever saved or logged
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not scores:
        raise ValueError("no score to draw")
    L, G = plan.num_layers, plan.num_kv_groups
    n = len(scores)
    width = min(4.0 + 0.35 * G, 10.0)
    fig, axes = plt.subplots(1, n, figsize=(width * n, 1.2 + 0.3 * L), squeeze=False)
    for ax, (name, score) in zip(axes[0], scores.items()):
        s = torch.as_tensor(score).detach().float().cpu()
        if tuple(s.shape) != (L, G):
            raise ValueError(f"score {name!r} has shape {tuple(s.shape)}, the plan is [{L}, {G}]")
        im = ax.imshow(s.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        for layer, groups in enumerate(plan.fa_groups):
            for g in groups:
                ax.add_patch(Rectangle((g - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(name)
        ax.set_xlabel("KV group")
        ax.set_ylabel("layer")
        ax.set_xticks(range(G))
        ax.set_yticks(range(0, L, max(1, L // 16)))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title or f"{plan} (FA groups boxed in red)", fontsize=9)
    fig.tight_layout()
    return fig
