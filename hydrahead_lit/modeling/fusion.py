"""Scale-normalised fusion of FA and LA head outputs before the shared output projection.

The two kinds of head produce outputs of different scale and distribution. Our choice (the paper gives
no formula): each LA head's output is RMS-normalised over the head dimension and multiplied by a learned
per-channel gain initialised to the teacher head's per-channel output RMS (measured on calibration
tokens), so it enters o_proj on the teacher's scale whatever the LA state's magnitude. FA head outputs
already live on the teacher's scale: they get a learned per-head gain initialised to 1, which makes the
fusion the identity on FA heads at initialisation (an all-FA student computes exactly the teacher).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScaleNormFusion(nn.Module):
    def __init__(self, num_fa_heads: int, num_la_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.fa_gain = nn.Parameter(torch.ones(num_fa_heads)) if num_fa_heads else None
        self.la_gain = nn.Parameter(torch.ones(num_la_heads, head_dim)) if num_la_heads else None

    def fa(self, o: Tensor) -> Tensor:
        """o [B, T, Hfa, D] -> gained FA outputs."""
        return o * self.fa_gain.to(o.dtype)[:, None]

    def la(self, o: Tensor) -> Tensor:
        """o [B, T, Hla, D] -> RMS-normalised, re-scaled LA outputs."""
        dtype = o.dtype
        o = o.float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        return (o * self.la_gain.float()).to(dtype)

    @torch.no_grad()
    def set_la_gain(self, per_channel_rms: Tensor) -> None:
        """Initialise the LA gains from the teacher heads' per-channel output RMS, [Hla, D]."""
        self.la_gain.copy_(per_channel_rms.to(self.la_gain))
