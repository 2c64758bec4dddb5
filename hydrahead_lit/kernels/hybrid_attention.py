"""The fused attention op of one HydraHead layer: :func:`hybrid_attention_triton`.

One autograd op over both kinds of heads, writing one ``[B, T, Hfa + Hla, D]`` buffer (no gather,
scatter or concatenation):

* LA heads: the Triton chunked gated delta rule (``gated_delta_rule.py``) reads the strided
  ``q_la/k_la/v_la`` views in place and its output kernel applies the fusion
  ``la_weight * o / rms(o)`` in its epilogue, storing straight into the LA slice of the output.
* FA heads: SDPA (FlashAttention / cuDNN on Hopper) over transposed views, times ``fa_gain``, stored
  into the FA slice. On CUDA it runs while the LA kernels run on a side stream; the two parts only
  meet in the output buffer. The backward runs SDPA's forward again (on the FA heads alone) and then its
  backward: everything the op keeps goes through ``save_for_backward``, so activation checkpointing
  sees it.

Definition: :mod:`hydrahead_lit.ops.hybrid_attention`; argument checks: ``checks.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_gdn_inputs, check_hybrid_inputs
from .fusion_norm import fusion_norm_backward
from .gated_delta_rule import GDNSaved, gdn_backward, gdn_forward

__all__ = ["hybrid_attention_triton"]

_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


class _Overlap:
    """Run a block on a side CUDA stream, ordered after everything queued so far on the current one;
    :meth:`join` makes the current stream wait for it. A no-op off CUDA or when disabled.

    Tensors the side stream allocates come from its own pool; every later use of that stream starts
    with a wait on the current stream, so a block freed by the current stream is never reused early.
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled and device.type == "cuda"
        if self.enabled:
            self.main = torch.cuda.current_stream(device)
            if device not in _SIDE_STREAMS:
                _SIDE_STREAMS[device] = torch.cuda.Stream(device)
            self.side = _SIDE_STREAMS[device]
            self.side.wait_stream(self.main)

    def __enter__(self) -> None:
        if self.enabled:
            self._ctx = torch.cuda.stream(self.side)
            self._ctx.__enter__()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._ctx.__exit__(*exc)

    def join(self) -> None:
        if self.enabled:
            self.main.wait_stream(self.side)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal softmax attention over ``[B, T, H, D]`` views; returns ``[B, T, H, D]`` (a view).

    The inputs are made dense ``[B, T, H, D]`` first (a no-op for the model's own, already dense ones): on an
    H200 (torch 2.11, cuDNN SDPA, bf16, causal, GQA) q and k split out of one rows tensor and v sliced from a
    fused projection gave wrong gradients, relative error 0.68 over a tiny student's parameters against 0.019
    with dense copies (``tests/modeling/test_gpu_step.py``; ``HybridAttention._fa_qkv``)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    gqa = k.shape[2] != q.shape[2]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale, enable_gqa=gqa
    )
    return out.transpose(1, 2)


class _HybridAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight, eps, fa_scale, la_scale, overlap):
        B, T, Hfa, D = q_fa.shape
        Hla = q_la.shape[2]
        dtype = q_fa.dtype if Hfa else q_la.dtype
        out = torch.empty(B, T, Hfa + Hla, D, device=q_la.device, dtype=dtype)
        ctx.dims, ctx.eps, ctx.fa_scale, ctx.la_scale, ctx.overlap = (Hfa, Hla), eps, fa_scale, la_scale, overlap
        stream = _Overlap(out.device, overlap and Hfa > 0 and Hla > 0)
        saved_la: list[Tensor] = []
        if Hla:
            with stream:
                _, _, saved, o_raw, rstd = gdn_forward(
                    q_la, k_la, v_la, g, beta, la_scale, out=out[:, :, Hfa:], norm_weight=la_weight, eps=eps
                )
            saved_la = [saved.Gc, saved.Tinv, saved.W, saved.U, saved.hs, o_raw, rstd]
        # The backward reruns SDPA under the autocast state of this forward (a trainer calls backward outside
        # its autocast region): the same bf16 function as here, on inputs of mixed dtypes as autocast sees them.
        dev = q_fa.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        if Hfa:
            # No autograd graph here: a graph kept on ctx holds SDPA's saved tensors outside
            # save_for_backward, where activation checkpointing cannot see them, and its backward then
            # recomputed the whole block a second time. The backward recomputes SDPA's forward instead.
            with torch.no_grad():
                attn = _sdpa(q_fa, k_fa, v_fa, fa_scale)
            torch.mul(attn, fa_gain.to(dtype)[:, None], out=out[:, :, :Hfa])
            del attn
        stream.join()
        ctx.save_for_backward(q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight, *saved_la)
        return out

    @staticmethod
    def backward(ctx, dout):
        Hfa, Hla = ctx.dims
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()  # the kernels need unit last stride
        q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight, *saved_la = ctx.saved_tensors
        grads: list[Tensor | None] = [None] * 14
        stream = _Overlap(dout.device, ctx.overlap and Hfa > 0 and Hla > 0)
        if Hla:
            with stream:
                *saved, o_raw, rstd = saved_la
                do, d_weight = fusion_norm_backward(dout[:, :, Hfa:], o_raw, rstd, la_weight)
                dq, dk, dv, dg, dbeta, _ = gdn_backward(
                    q_la, k_la, v_la, g, beta, GDNSaved(*saved),
                    do.transpose(1, 2), None, ctx.la_scale, False,
                )  # fmt: skip
            grads[3:8] = [dq, dk, dv, dg, dbeta]
            grads[9] = d_weight
        if Hfa and any(ctx.needs_input_grad[i] for i in (0, 1, 2, 8)):
            leaves = [x.detach().requires_grad_(need) for x, need in zip((q_fa, k_fa, v_fa), ctx.needs_input_grad)]
            dev, autocast, autocast_dtype = ctx.autocast
            # No autocast cache: a backward called inside an autocast region would keep each layer's copies.
            with torch.enable_grad(), torch.autocast(dev, dtype=autocast_dtype, enabled=autocast, cache_enabled=False):
                attn = _sdpa(*leaves, ctx.fa_scale)  # SDPA's forward again, for its own backward
            dy_fa = dout[:, :, :Hfa]
            grads[8] = (dy_fa.float() * attn.detach().float()).sum((0, 1, 3)).to(fa_gain.dtype)
            d_attn = dy_fa * fa_gain.to(dy_fa.dtype)[:, None]
            wanted = [x for x in leaves if x.requires_grad]
            got = iter(torch.autograd.grad(attn, wanted, d_attn) if wanted else [])
            grads[0:3] = [next(got) if x.requires_grad else None for x in leaves]
        stream.join()
        return tuple(grads)


def hybrid_attention_triton(
    q_fa: Tensor,
    k_fa: Tensor,
    v_fa: Tensor,
    q_la: Tensor,
    k_la: Tensor,
    v_la: Tensor,
    g: Tensor,
    beta: Tensor,
    fa_gain: Tensor,
    la_weight: Tensor,
    eps: float = 1e-6,
    fa_scale: float | None = None,
    la_scale: float | None = None,
    overlap: bool = True,
) -> Tensor:
    """Fused HydraHead layer attention; arguments and result as in
    :func:`hydrahead_lit.ops.hybrid_attention.hybrid_attention_ref`. ``overlap`` runs the FA and LA
    parts on two CUDA streams."""
    check_hybrid_inputs(q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight)
    if q_la.shape[2]:
        check_gdn_inputs(q_la, k_la, v_la, g, beta)
    D = q_fa.shape[-1]
    fa_scale = D**-0.5 if fa_scale is None else fa_scale
    la_scale = D**-0.5 if la_scale is None else la_scale
    return _HybridAttention.apply(
        q_fa, k_fa, v_fa, q_la, k_la, v_la, g, beta, fa_gain, la_weight, eps, fa_scale, la_scale, overlap
    )
