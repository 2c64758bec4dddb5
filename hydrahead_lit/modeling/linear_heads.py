"""Gated DeltaNet heads that replace softmax heads of a teacher layer, initialised by parameter reuse.

Every LA head owns its query, key and value projections (copied from the teacher head it replaces; with
GQA the group's key/value rows are copied to each of its query heads, so each LA head has its own
state and gates). New parameters and their initial values:

- `a_proj` (zeros) with `A_log` (zeros) and `dt_bias`: the decay is exp(g) with
  g = -exp(A_log) * softplus(a_proj(x) + dt_bias). With a zero `a_proj` the decay is a per-head constant
  whose half-life is spread geometrically over `decay_half_life` across the heads of a layer, so
  the layer starts with both local and long-memory heads (stage 1 then makes it input dependent).
- `b_proj` (zero weight, bias `beta_init_logit`): the delta-rule write strength beta = sigmoid(.);
  a constant 0.5 at the start.
- optional depthwise causal `conv` on q, k and v (kernel `short_conv`): initialised to the identity
  (last tap 1), so with it on the heads start exactly where they would without it.
- optional sigmoid output gate `g_proj` (zero weight, bias +4 so the gate starts near 1).
q and k are L2-normalised after the teacher's q/k norms and RoPE (when `use_rope`), which keeps the
delta-rule transition contractive; the fusion module restores the teacher's output scale.

The projections run as one GEMM over their concatenated weights (`fused_inputs.project_split`; the layer
adds its FA heads' q/k/v to it), and the rows of q and k are prepared as one tensor (`la_qk_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.modeling.fused_inputs import apply_rope, la_qk_rows, project_split, rms_norm, stats_dtype
from hydrahead_lit.ops.la_backend import gated_delta_rule
from hydrahead_lit.ops.short_conv import causal_short_conv

__all__ = ["GatedDeltaNetHeads", "HeadRMSNorm", "LAConfig", "apply_rope"]


@dataclass
class LAConfig:
    """How the linear-attention heads are built (stored in the student's config)."""

    use_rope: bool = True
    """Apply the teacher's rotary embedding to LA queries and keys (relative-position cues survive)."""
    short_conv: int = 0
    """Kernel size of a depthwise causal conv on q/k/v (0 disables it; fla's GDN uses 4)."""
    output_gate: bool = False
    """Multiply each LA head's output by sigmoid(g_proj(x))."""
    decay_half_life: tuple[float, float] = (4.0, 512.0)
    """Initial decay half-lives in tokens, spread geometrically across a layer's LA heads."""
    beta_init_logit: float = 0.0
    """Initial logit of the delta-rule write strength beta."""
    backend: str = "auto"
    """Gated DeltaNet backend: auto | fla | triton | torch (see hydrahead_lit.ops.la_backend)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> LAConfig:
        d = dict(d or {})
        if "decay_half_life" in d:
            d["decay_half_life"] = tuple(d["decay_half_life"])
        return cls(**d)


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension (the teacher's q_norm/k_norm, copied)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedDeltaNetHeads(nn.Module):
    """`num_heads` Gated DeltaNet heads of one layer; input [B, T, hidden], output [B, T, H, D]."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        cfg: LAConfig,
        bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.cfg = num_heads, head_dim, cfg
        width = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, width, bias=bias)
        self.k_proj = nn.Linear(hidden_size, width, bias=bias)
        self.v_proj = nn.Linear(hidden_size, width, bias=bias)
        self.q_norm = HeadRMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = HeadRMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.A_log = nn.Parameter(torch.zeros(num_heads))
        self.dt_bias = nn.Parameter(torch.zeros(num_heads))
        self.conv = nn.Parameter(torch.zeros(3 * width, cfg.short_conv)) if cfg.short_conv > 0 else None
        self.g_proj = nn.Linear(hidden_size, width, bias=True) if cfg.output_gate else None
        self.reset_new_parameters()

    @torch.no_grad()
    def reset_new_parameters(self) -> None:
        """Initialise the parameters the teacher does not have (see the module docstring)."""
        self.a_proj.weight.zero_()
        self.b_proj.weight.zero_()
        self.b_proj.bias.fill_(self.cfg.beta_init_logit)
        self.A_log.zero_()
        lo, hi = self.cfg.decay_half_life
        n = self.num_heads
        half_life = torch.tensor([lo * (hi / lo) ** (i / max(n - 1, 1)) for i in range(n)])
        dt = math.log(2.0) / half_life  # -g per token, so exp(g)^half_life == 1/2
        self.dt_bias.copy_(_inverse_softplus(dt))
        if self.conv is not None:
            self.conv.zero_()
            self.conv[:, -1] = 1.0
        if self.g_proj is not None:
            self.g_proj.weight.zero_()
            self.g_proj.bias.fill_(4.0)

    @property
    def input_linears(self) -> list[nn.Linear]:
        """The projections of the layer input, in the order of `input_splits`: q, k, v, a, b[, g]."""
        return [self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj] + (
            [self.g_proj] if self.g_proj is not None else []
        )

    def input_splits(self) -> list[int]:
        """Widths of this module's pieces of the fused input projection, in order: q|k and v (q|k|v as one
        piece when the short conv mixes them over time), the decay logits a, the beta logits b[, the output
        gate's logits]. A caller fusing more linears splits the whole projection once (one backward cat)."""
        W, H = self.num_heads * self.head_dim, self.num_heads
        qkv = [3 * W] if self.conv is not None else [2 * W, W]
        return qkv + [H, H] + ([W] if self.g_proj is not None else [])

    def project(self, x: Tensor) -> list[Tensor]:
        """x [B, T, hidden] -> the pieces of `input_splits` (views of one aligned projection)."""
        return project_split(x, self.input_linears, self.input_splits())

    def rule_inputs(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        state: dict | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k (L2-normalised), v [B, T, H, D] and g, beta [B, T, H] of the gated delta rule from the layer
        input (see `prepare`)."""
        return self.prepare(self.project(x), cos, sin, state, valid)[:5]

    def prepare(
        self,
        pieces: Sequence[Tensor],
        cos: Tensor | None,
        sin: Tensor | None,
        state: dict | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """q, k (L2-normalised), v [B, T, H, D], g, beta [B, T, H] and the output gate's logits [B, T, H*D]
        (None without gate) from this module's projection `pieces` (see `input_splits`); updates the conv
        state in `state` when given.

        `valid` [B, T] (bool) marks real tokens. A pad writes nothing: the conv skips it, and there
        g = 0 (no decay), beta = 0 (no write) and k = v = 0, so the delta-rule step is the identity on the
        state whatever the projections' biases would write (exact in every backend: a zero write adds 0).
        """
        H, D = self.num_heads, self.head_dim
        if self.conv is not None:
            qkv, a, b, *gate = pieces
            B, T, _ = qkv.shape
            prev = None if state is None else state.get("conv")
            qkv, conv_state = causal_short_conv(
                qkv, self.conv.to(qkv.dtype), prev, output_final_state=state is not None, valid=valid
            )
            if state is not None:
                state["conv"] = conv_state
            # conv1d's output is [B, C, T]-ordered; one copy back to [B, T, C] rows gives the later ops and the
            # kernels unit-stride rows (the Triton gated delta rule needs a unit last stride for q, k and v).
            qk, v = qkv.contiguous().split([2 * H * D, H * D], dim=-1)
        else:
            qk, v, a, b, *gate = pieces
            B, T, _ = qk.shape
        # The rows of q and k as one tensor: the norm's weight, RoPE and the L2 norm run once for both.
        use_rope = self.cfg.use_rope and cos is not None
        qk = la_qk_rows(
            qk.view(B, T, 2 * H, D),
            self.q_norm.weight if self.q_norm is not None else None,
            self.k_norm.weight if self.k_norm is not None else None,
            cos if use_rope else None,
            sin if use_rope else None,
        )
        q, k = qk.split([H, H], dim=2)
        v = v.view(B, T, H, D)  # a view of the projection: strided rows, unit last stride
        # Decay and beta in float32 (float64 for a float64 model): g is summed over a chunk in the kernels,
        # where bf16 would lose the small decays; both are H numbers per token, so the casts cost launches only.
        acc = stats_dtype(a.dtype)
        g = -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))
        beta = torch.sigmoid(b.to(acc))
        if valid is not None:
            pad = ~valid.to(torch.bool)
            g, beta = g.masked_fill(pad[:, :, None], 0.0), beta.masked_fill(pad[:, :, None], 0.0)
            k, v = k.masked_fill(pad[:, :, None, None], 0.0), v.masked_fill(pad[:, :, None, None], 0.0)
        return q, k, v, g, beta, (gate[0] if gate else None)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        state: dict | None = None,
        valid: Tensor | None = None,
        pieces: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Run the heads; `state` (a dict with 'recurrent' and 'conv' entries) is read and updated; pad
        positions (`valid` False) leave it untouched (see `prepare`). `pieces`: this module's part of a
        projection of `x` the caller already made (see `input_splits`), else it projects `x` itself."""
        B, T, _ = x.shape
        q, k, v, g, beta, gate = self.prepare(self.project(x) if pieces is None else pieces, cos, sin, state, valid)
        initial = None if state is None else state.get("recurrent")
        o, final = gated_delta_rule(
            q, k, v, g, beta, initial_state=initial, output_final_state=state is not None, backend=self.cfg.backend
        )
        if state is not None:
            state["recurrent"] = final
        if gate is not None:
            o = o * torch.sigmoid(gate).view(B, T, self.num_heads, self.head_dim).to(o.dtype)
        return o
