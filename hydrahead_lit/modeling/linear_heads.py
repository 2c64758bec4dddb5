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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydrahead_lit.ops.la_backend import gated_delta_rule
from hydrahead_lit.ops.short_conv import causal_short_conv


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
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, T, H, D]; cos/sin [B, T, D] as the teacher's rotary embedding returns them."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + _rotate_half(x) * sin


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

    def rule_inputs(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        state: dict | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k (L2-normalised), v [B, T, H, D] and g, beta [B, T, H] of the gated delta rule; updates the
        conv state in `state` when given.

        `valid` [B, T] (bool) marks real tokens. A pad writes nothing: the conv skips it, and there
        g = 0 (no decay), beta = 0 (no write) and k = v = 0, so the delta-rule step is the identity on the
        state whatever the projections' biases would write (exact in every backend: a zero write adds 0).
        """
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        if self.conv is not None:
            prev = None if state is None else state.get("conv")
            qkv, conv_state = causal_short_conv(
                qkv, self.conv.to(qkv.dtype), prev, output_final_state=state is not None, valid=valid
            )
            if state is not None:
                state["conv"] = conv_state
        q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.cfg.use_rope and cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = F.normalize(q.float(), dim=-1).to(v.dtype)
        k = F.normalize(k.float(), dim=-1).to(v.dtype)
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta = torch.sigmoid(self.b_proj(x).float())
        if valid is not None:
            pad = ~valid.to(torch.bool)
            g, beta = g.masked_fill(pad[:, :, None], 0.0), beta.masked_fill(pad[:, :, None], 0.0)
            k, v = k.masked_fill(pad[:, :, None, None], 0.0), v.masked_fill(pad[:, :, None, None], 0.0)
        return q, k, v, g, beta

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        state: dict | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Run the heads; `state` (a dict with 'recurrent' and 'conv' entries) is read and updated; pad
        positions (`valid` False) leave it untouched (see `rule_inputs`)."""
        B, T, _ = x.shape
        q, k, v, g, beta = self.rule_inputs(x, cos, sin, state, valid)
        initial = None if state is None else state.get("recurrent")
        o, final = gated_delta_rule(
            q, k, v, g, beta, initial_state=initial, output_final_state=state is not None, backend=self.cfg.backend
        )
        if state is not None:
            state["recurrent"] = final
        if self.g_proj is not None:
            o = o * torch.sigmoid(self.g_proj(x)).view(B, T, self.num_heads, self.head_dim).to(o.dtype)
        return o
