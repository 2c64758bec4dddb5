"""Backend dispatch for the gated delta rule: fla kernels, the project's Triton op, or PyTorch.

Every backend is an entry of this module's registry: ``"torch"`` (the pure-PyTorch chunked
reference, any device), ``"fla"`` (flash-linear-attention's kernels) and ``"triton"`` (the project's
op, :mod:`hydrahead_lit.kernels.gated_delta_rule`). The two GPU entries import their kernels only when
a CUDA dispatch first needs them, so importing this module loads no compiler. ``auto`` picks, on CUDA,
fla's chunk kernels when they are correct for the installed Triton, else the project's Triton op,
else the reference; on CPU always PyTorch.

fla 0.6.0 refuses the backward of its gated chunk kernels on Hopper with 3.4.0 <= Triton < 3.7.1,
because that compiler range miscompiles them (fla-org/flash-linear-attention#640). Training on such
a machine must therefore avoid fla's backward; :func:`fla_gated_backward_is_safe` detects it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hydrahead_lit.ops.gated_delta_rule import chunk_gated_delta_rule_ref, recurrent_gated_delta_rule

__all__ = [
    "LABackend",
    "fla_gated_backward_is_safe",
    "gated_delta_rule",
    "register_la_backend",
    "select_la_backend",
]

LABackend = Literal["auto", "fla", "triton", "torch"]
GDRFn = Callable[..., tuple[Tensor, Tensor | None]]

logger = logging.getLogger("hydrahead_lit")

# Order tried by "auto" on CUDA.
_AUTO_ORDER = ("fla", "triton", "torch")
# At or below this length the step-by-step recurrence beats the chunked form in PyTorch.
_TORCH_RECURRENT_MAX_T = 8
# fla's fused recurrent kernel (forward only) is its choice for decoding and short inputs.
_FLA_RECURRENT_MAX_T = 64


@dataclass(frozen=True)
class _Backend:
    fn: GDRFn
    unavailable_reason: Callable[[torch.device, bool], str | None]


_REGISTRY: dict[str, _Backend] = {}
_LOGGED: set[tuple[str, bool]] = set()


def register_la_backend(name: str, fn: GDRFn, is_available: Callable[[torch.device, bool], bool]) -> None:
    """Register ``fn`` (same signature as :func:`gated_delta_rule`, without ``backend``) as ``name``.

    ``is_available(device, needs_grad)`` says whether ``fn`` can run there (and backpropagate when
    ``needs_grad``). Registering a name again replaces the earlier entry.
    """
    if name == "auto":
        raise ValueError("'auto' is reserved for automatic selection; register under another name")

    def reason(device: torch.device, needs_grad: bool) -> str | None:
        if is_available(device, needs_grad):
            return None
        return f"backend '{name}' reports it cannot run on {device.type} (needs_grad={needs_grad})"

    _REGISTRY[name] = _Backend(fn, reason)


# ---------------------------------------------------------------------------------------------------
# Environment probes (separate functions so tests can monkeypatch them without a GPU).


def _device_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _triton_version() -> str | None:
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def _fla_import_error() -> str | None:
    """None when fla's gated delta rule kernels import, else why not."""
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception as err:  # ImportError, or Triton failing while fla loads
        return f"fla does not import ({type(err).__name__}: {err})"
    return None


@functools.cache
def _project_triton_import_error() -> str | None:
    """None when the project's Triton op imports, else why not."""
    try:
        importlib.import_module("hydrahead_lit.kernels.gated_delta_rule")
    except Exception as err:  # ImportError, or Triton failing to load its driver
        return f"the project's Triton op does not import ({type(err).__name__}: {err})"
    return None


def _fla_backward_refusal(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    major, minor = _device_capability(device)
    version = _triton_version()
    if major != 9 or version is None:
        return None
    from packaging.version import Version

    if Version("3.4.0") <= Version(version) < Version("3.7.1"):
        return (
            f"fla gated backward refused on Hopper (sm_{major}{minor}) with Triton {version} "
            "(>= 3.4.0 and < 3.7.1 give wrong gradients)"
        )
    return None


def fla_gated_backward_is_safe(device: torch.device) -> bool:
    """False on Hopper (sm_90) with 3.4 <= Triton < 3.7.1, where fla's gated backward is wrong."""
    return _fla_backward_refusal(torch.device(device)) is None


# ---------------------------------------------------------------------------------------------------
# Built-in backends.


def _torch_gdr(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    fn = recurrent_gated_delta_rule if q.shape[1] <= _TORCH_RECURRENT_MAX_T else chunk_gated_delta_rule_ref
    return fn(q, k, v, g, beta, scale, initial_state, output_final_state)


def expand_kv_heads(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, int]:
    """GQA for kernels that want as many KV as query heads: every query head gets its own copy of its
    KV head (and gates). All copies then carry the same state, and autograd sums the copies' gradients.
    Returns the expanded k, v, g, beta, initial_state and the group size."""
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of KV heads ({k.shape[2]})")
    group = q.shape[2] // k.shape[2]
    if group > 1:
        k, v, g, beta = (x.repeat_interleave(group, dim=2) for x in (k, v, g, beta))
        if initial_state is not None:
            initial_state = initial_state.repeat_interleave(group, dim=1)
    return k, v, g, beta, initial_state, group


def collapse_state(state: Tensor | None, group: int) -> Tensor | None:
    """The per-KV-head state back from a state expanded by :func:`expand_kv_heads`."""
    return state if state is None or group == 1 else state[:, ::group]


def _fla_gdr(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    k, v, g, beta, initial_state, group = expand_kv_heads(q, k, v, g, beta, initial_state)
    if initial_state is not None:
        initial_state = initial_state.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # fused_recurrent has no backward in fla 0.6.0, so it only serves inference.
    use_recurrent = q.shape[1] <= _FLA_RECURRENT_MAX_T and not _needs_grad(q, k, v, g, beta, initial_state)
    kernel = fused_recurrent_gated_delta_rule if use_recurrent else chunk_gated_delta_rule
    # q and k arrive L2-normalized: the in-kernel normalization stays off.
    o, state = kernel(
        q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=False,
    )  # fmt: skip
    return o.to(v.dtype), collapse_state(state, group)


def _fla_reason(device: torch.device, needs_grad: bool) -> str | None:
    if device.type != "cuda":
        return f"fla kernels need a CUDA device, got {device.type}"
    if needs_grad and (refusal := _fla_backward_refusal(device)) is not None:
        return refusal
    return _fla_import_error()


def _triton_gdr(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    from hydrahead_lit.kernels.gated_delta_rule import chunk_gated_delta_rule_triton

    k, v, g, beta, initial_state, group = expand_kv_heads(q, k, v, g, beta, initial_state)
    o, state = chunk_gated_delta_rule_triton(
        q, k if k.stride(-1) == 1 else k.contiguous(), v, g, beta, scale, initial_state, output_final_state
    )
    return o, collapse_state(state, group)


def _triton_reason(device: torch.device, needs_grad: bool) -> str | None:
    if device.type != "cuda":
        return f"the project's Triton op needs a CUDA device, got {device.type}"
    return _project_triton_import_error()


register_la_backend("torch", _torch_gdr, lambda device, needs_grad: True)
_REGISTRY["fla"] = _Backend(_fla_gdr, _fla_reason)
_REGISTRY["triton"] = _Backend(_triton_gdr, _triton_reason)


# ---------------------------------------------------------------------------------------------------
# Selection and the entry point.


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _unavailable_reason(name: str, device: torch.device, needs_grad: bool) -> str | None:
    if name not in _REGISTRY:
        return f"no '{name}' backend is registered"
    return _REGISTRY[name].unavailable_reason(device, needs_grad)


def select_la_backend(device: torch.device, needs_grad: bool, preferred: str = "auto") -> str:
    """Name of the backend that runs the gated delta rule on ``device``.

    ``preferred="auto"`` chooses as described in the module docstring and logs the choice (and why
    the others were skipped) once per (device type, needs_grad). An explicit name is checked and
    returned, or raises ``RuntimeError`` saying why it cannot run here; an unknown name raises
    ``ValueError``.
    """
    device = torch.device(device)
    if preferred != "auto":
        if preferred not in _REGISTRY:
            known = ", ".join(["auto", *sorted(_REGISTRY)])
            raise ValueError(f"unknown LA backend '{preferred}'; choose one of: {known}")
        if (reason := _unavailable_reason(preferred, device, needs_grad)) is not None:
            raise RuntimeError(f"LA backend '{preferred}' cannot run here: {reason}. Use backend='auto' or 'torch'.")
        return preferred

    skipped: list[str] = []
    if device.type != "cuda":
        choice = "torch"
        skipped.append(f"{device.type} device: GPU kernels are not used")
    else:
        choice = "torch"
        for name in _AUTO_ORDER:
            reason = _unavailable_reason(name, device, needs_grad)
            if reason is None:
                choice = name
                break
            skipped.append(f"{name}: {reason}")
    key = (device.type, needs_grad)
    if key not in _LOGGED:
        _LOGGED.add(key)
        why = "; ".join(skipped) if skipped else "first choice available"
        mode = "training" if needs_grad else "inference"
        logger.info("LA backend on %s for %s: '%s' (%s)", device.type, mode, choice, why)
    return choice


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule on the selected backend; arguments and results as in
    :func:`hydrahead_lit.ops.gated_delta_rule.recurrent_gated_delta_rule`."""
    needs_grad = _needs_grad(q, k, v, g, beta, initial_state)
    name = select_la_backend(q.device, needs_grad, backend)
    return _REGISTRY[name].fn(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
