"""Chunked Gated DeltaNet in Triton, forward and backward: :func:`chunk_gated_delta_rule_triton`.

Same function and conventions as :func:`hydrahead_lit.ops.gated_delta_rule.chunk_gated_delta_rule_ref`
(flash-linear-attention's gated delta rule: ``q``/``k`` L2-normalized by the caller, ``g`` a log
decay, states ``[B, H, K, V]`` in float32). The design is the WY/UT chunked form of Yang et al.,
"Gated Delta Networks" (2024): in-chunk work runs for all chunks in parallel, and only a
``[K, V]`` state is carried chunk to chunk. Seven launches in all (three forward, four backward; see
``gdn_fwd.py`` and ``gdn_bwd.py``). It does not go through flash-linear-attention,
so it is also correct on Hopper with Triton 3.6, where fla refuses its gated backward.
:func:`gdn_forward` and :func:`gdn_backward` are the launchers; the hybrid attention op calls them
with the fused RMS-norm epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from .checks import check_gdn_inputs
from .gdn_bwd import gdn_bwd_du_local_kernel, gdn_bwd_intra_kernel, gdn_bwd_state_kernel, gdn_bwd_wy_kernel
from .gdn_common import interpret_mode
from .gdn_fwd import gdn_fwd_out_kernel, gdn_fwd_prep_kernel, gdn_fwd_state_kernel

__all__ = ["chunk_gated_delta_rule_triton", "check_gdn_inputs", "gdn_backward", "gdn_forward", "GDNSaved"]

CHUNK = 64


# Width of the V column blocks of the two state recurrences. They are sequential over chunks, so
# narrow blocks put more programs side by side (B=1 and few heads otherwise leave most SMs idle).
STATE_BLOCK_V = 16  # measured on an H100: 16 beats 32 at T >= 16K (docs/benchmarks.md)


def _bv(V: int) -> int:
    return min(V, STATE_BLOCK_V)


def _s3(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


@dataclass
class GDNSaved:
    """What the backward needs from the forward (besides the inputs)."""

    Gc: Tensor  # [B, H, T] in-chunk cumulative log decay, float32
    Tinv: Tensor  # [B, H, T, BT] rows of each chunk's (I + A)^-1
    W: Tensor  # [B, H, T, K] WY factor
    U: Tensor  # [B, H, T, V] written values
    hs: Tensor  # [B, H, NT, K, V] chunk-start states


@dataclass(frozen=True)
class SeqLayout:
    """How the time axis splits into sequences: one per batch row, or packed (``cu_seqlens``, B = 1)."""

    N: int  # sequences
    NT: int  # chunks per batch row (dense) or in all (packed)
    cu_seqlens: Tensor | None = None  # [N + 1] int32
    chunk_indices: Tensor | None = None  # [NT, 2] int32: (sequence, chunk within it) per chunk
    chunk_offsets: Tensor | None = None  # [N + 1] int32: first chunk of each sequence

    @staticmethod
    def build(B: int, T: int, chunk_size: int, cu_seqlens: Tensor | None) -> SeqLayout:
        if cu_seqlens is None:
            return SeqLayout(N=B, NT=triton.cdiv(T, chunk_size))
        cu = cu_seqlens.to(torch.int64)
        n_chunks = (cu[1:] - cu[:-1] + chunk_size - 1) // chunk_size
        offsets = torch.cat([cu.new_zeros(1), n_chunks.cumsum(0)])
        total = int(offsets[-1])
        seq = torch.repeat_interleave(torch.arange(len(n_chunks), device=cu.device), n_chunks)
        within = torch.arange(total, device=cu.device) - offsets[:-1].repeat_interleave(n_chunks)
        return SeqLayout(
            N=len(n_chunks), NT=total, cu_seqlens=cu.to(torch.int32),
            chunk_indices=torch.stack([seq, within], 1).to(torch.int32).contiguous(),
            chunk_offsets=offsets.to(torch.int32),
        )  # fmt: skip

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens is not None

    def chunk_grid(self, B: int, H: int) -> tuple[int, int]:
        return (self.NT, H) if self.varlen else (self.NT, B * H)

    def chunk_args(self, dummy: Tensor) -> tuple[Tensor, Tensor]:
        return (self.cu_seqlens, self.chunk_indices) if self.varlen else (dummy, dummy)

    def seq_args(self, dummy: Tensor) -> tuple[Tensor, Tensor]:
        return (self.cu_seqlens, self.chunk_offsets) if self.varlen else (dummy, dummy)


def gdn_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    out: Tensor | None = None,
    norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    chunk_size: int = CHUNK,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, GDNSaved, Tensor | None, Tensor | None]:
    """Launch the forward; return ``(out, final_state, saved, o_raw, rstd)``.

    ``out`` may be a strided ``[B, T, H, V]`` view to write into (a slice of a hybrid layer's output).
    With ``norm_weight`` ``[H, V]`` the kernel writes ``norm_weight * o / rms(o)`` and also returns the
    raw output ``o_raw`` ``[B, H, T, V]`` and ``rstd = 1/rms`` ``[B, H, T]`` for the backward.
    With ``cu_seqlens`` (B = 1) each packed sequence starts from its own state (``[N, H, K, V]``).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    lay = SeqLayout.build(B, T, BT, cu_seqlens)
    NT = lay.NT
    dev, dt = q.device, q.dtype
    Gc = torch.empty(B, H, T, device=dev, dtype=torch.float32)
    Tinv = torch.empty(B, H, T, BT, device=dev, dtype=dt)
    W = torch.empty(B, H, T, K, device=dev, dtype=dt)
    U = torch.empty(B, H, T, V, device=dev, dtype=dt)
    hs = torch.empty(B, H, NT, K, V, device=dev, dtype=dt)
    interp = interpret_mode()
    warps = {} if interp else {"num_warps": 8}
    gdn_fwd_prep_kernel[lay.chunk_grid(B, H)](
        k, v, g, beta, Gc, Tinv, W, U, *lay.chunk_args(Gc), T, H, *_s3(k), *_s3(v), *_s3(g), *_s3(beta),
        K=K, V=V, BT=BT, IS_VARLEN=lay.varlen, **warps,
    )  # fmt: skip
    ht = torch.empty(lay.N, H, K, V, device=dev, dtype=torch.float32) if output_final_state else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    BV = _bv(V)
    gdn_fwd_state_kernel[(V // BV, lay.N * H)](
        k, W, U, Gc, hs, h0 if h0 is not None else Gc, ht if ht is not None else Gc, *lay.seq_args(Gc),
        T, NT, H, *_s3(k), K=K, V=V, BV=BV, BT=BT, HAS_H0=h0 is not None, STORE_HT=ht is not None,
        IS_VARLEN=lay.varlen, **({} if interp else {"num_warps": 4}),
    )  # fmt: skip
    if out is None:
        out = torch.empty(B, T, H, V, device=dev, dtype=v.dtype)
    fuse = norm_weight is not None
    o_raw = torch.empty(B, H, T, V, device=dev, dtype=dt) if fuse else None
    rstd = torch.empty(B, H, T, device=dev, dtype=torch.float32) if fuse else None
    gdn_fwd_out_kernel[lay.chunk_grid(B, H)](
        q, k, U, Gc, hs, out, o_raw if fuse else out, rstd if fuse else Gc,
        norm_weight if fuse else Gc, *lay.chunk_args(Gc), T, NT, H, float(scale), float(eps),
        *_s3(q), *_s3(k), *_s3(out), K=K, V=V, BT=BT, FUSE_NORM=fuse, IS_VARLEN=lay.varlen, **warps,
    )  # fmt: skip
    return out, ht, GDNSaved(Gc, Tinv, W, U, hs), o_raw, rstd


def gdn_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    saved: GDNSaved,
    do: Tensor,
    dht: Tensor | None,
    scale: float,
    need_dh0: bool,
    chunk_size: int = CHUNK,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward; return ``(dq, dk, dv, dg, dbeta, dh0)`` (gradients contiguous)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    lay = SeqLayout.build(B, T, BT, cu_seqlens)
    NT = lay.NT
    dev = q.device
    dU = torch.empty_like(saved.U)
    dhs = torch.empty_like(saved.hs)
    dh0 = torch.empty(lay.N, H, K, V, device=dev, dtype=torch.float32) if need_dh0 else None
    dht_c = dht.float().contiguous() if dht is not None else None
    BV = _bv(V)
    interp = interpret_mode()
    gdn_bwd_du_local_kernel[lay.chunk_grid(B, H)](
        q, k, saved.Gc, do, dU, *lay.chunk_args(dU), T, H, float(scale), *_s3(q), *_s3(k), *_s3(do),
        K=K, V=V, BT=BT, IS_VARLEN=lay.varlen, **({} if interp else {"num_warps": 4}),
    )  # fmt: skip
    gdn_bwd_state_kernel[(V // BV, lay.N * H)](
        q, k, saved.W, saved.Gc, do, dU, dhs, dht_c if dht_c is not None else dU,
        dh0 if dh0 is not None else dU, *lay.seq_args(dU), T, NT, H, float(scale),
        *_s3(q), *_s3(k), *_s3(do), K=K, V=V, BV=BV, BT=BT, HAS_DHT=dht_c is not None,
        STORE_DH0=need_dh0, IS_VARLEN=lay.varlen, **({} if interp else {"num_warps": 8}),
    )  # fmt: skip
    dq = torch.empty(B, T, H, K, device=dev, dtype=q.dtype)
    dk = torch.empty(B, T, H, K, device=dev, dtype=k.dtype)
    dv = torch.empty(B, T, H, V, device=dev, dtype=v.dtype)
    dg = torch.empty(B, T, H, device=dev, dtype=g.dtype)
    dbeta = torch.empty(B, T, H, device=dev, dtype=beta.dtype)
    warps = {} if interp else {"num_warps": 8}
    dk_part = torch.empty(B, H, T, K, device=dev, dtype=torch.float32)
    dG_part = torch.empty(B, H, T, device=dev, dtype=torch.float32)
    gdn_bwd_intra_kernel[lay.chunk_grid(B, H)](
        q, k, saved.Gc, saved.U, saved.hs, do, dhs, dq, dk_part, dG_part, *lay.chunk_args(dU), T, NT, H,
        float(scale), *_s3(q), *_s3(k), *_s3(do), K=K, V=V, BT=BT, BVI=min(V, 32), IS_VARLEN=lay.varlen,
        **warps,
    )  # fmt: skip
    gdn_bwd_wy_kernel[lay.chunk_grid(B, H)](
        k, v, beta, saved.Gc, saved.Tinv, saved.hs, dU, dk_part, dG_part, dk, dv, dbeta, dg,
        *lay.chunk_args(dU), T, NT, H, *_s3(k), *_s3(v), *_s3(beta), K=K, V=V, BT=BT, BVI=min(V, 32),
        IS_VARLEN=lay.varlen, **warps,
    )  # fmt: skip
    return dq, dk, dv, dg, dbeta, dh0


class _ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        o, ht, saved, _, _ = gdn_forward(
            q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size=chunk_size,
            cu_seqlens=cu_seqlens,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, g, beta, saved.Gc, saved.Tinv, saved.W, saved.U, saved.hs)
        ctx.scale, ctx.chunk_size, ctx.has_h0 = scale, chunk_size, initial_state is not None
        ctx.cu_seqlens = cu_seqlens
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, *saved = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = gdn_backward(
            q, k, v, g, beta, GDNSaved(*saved), do, dht, ctx.scale, ctx.has_h0, ctx.chunk_size,
            ctx.cu_seqlens,
        )  # fmt: skip
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None


def _check_cu_seqlens(cu_seqlens: Tensor, B: int, T: int) -> int:
    """Validate packed-sequence boundaries; return the number of sequences."""
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed into one row: B must be 1, got {B}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor [N + 1]; got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != T or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to T = {T} without decreasing; got {bounds}")
    return len(bounds) - 1


def chunk_gated_delta_rule_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = CHUNK,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over ``[B, T, H, D]`` inputs; returns ``(o [B, T, H, V], final_state | None)``.

    Differentiable w.r.t. q, k, v, g, beta and ``initial_state`` ``[N, H, K, V]`` (N = B, or the
    number of packed sequences). ``cu_seqlens`` ``[N + 1]`` (FlashAttention's convention, B = 1)
    packs several documents into one row: each starts from its own initial state (zero by default)
    and none sees another. Needs one KV head per query head (``Hq == Hkv``) and power-of-two head
    dims >= 16. ``chunk_size`` (a power of two >= 16) is exposed for tests; 64 is the tuned value.
    """
    check_gdn_inputs(q, k, v, g, beta)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16; got {chunk_size}")
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, B, T)
    if initial_state is not None and initial_state.shape != (N, H, K, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [N, H, K, V] = {(N, H, K, v.shape[-1])}; got {tuple(initial_state.shape)}"
        )
    scale = K**-0.5 if scale is None else scale
    return _ChunkGatedDeltaRule.apply(
        q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
