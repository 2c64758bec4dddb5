"""FSDP2 sharding of the student and the frozen teacher (called from `configure_model`).

Each decoder block becomes its own `fully_shard` unit, then the model root (embeddings, final norm,
lm_head). Teacher and student are sharded as *separate* units, so the frozen teacher never shares a
unit with trainable parameters (which would cost gradient memory for the teacher, see
torch.distributed.fsdp docs) and can keep its own dtype. Activation checkpointing uses the model's
own per-block checkpointing (`transformers`' `activation_checkpointing_enable`). `torch.compile` is
optional and per decoder block (`nn.Module.compile`, in place, so the block stays the module FSDP2 wraps).
The order is torchtitan's: activation checkpointing, then compile, then `fully_shard`.
"""

from __future__ import annotations

import torch
from torch import nn

from hydrahead_lit.modeling.arch import decoder_layers

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def mixed_precision_dtype(name: str | None) -> torch.dtype | None:
    """`"bf16"` -> torch.bfloat16; None / "none" / "fp32" -> None (compute in the parameters' dtype)."""
    if name in (None, "none", "fp32", "float32", "32"):
        return None
    if name not in _DTYPES:
        raise ValueError(f"mixed_precision must be one of none, bf16, fp16; got {name!r}")
    return _DTYPES[name]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder block in the backward pass (non-reentrant, works under FSDP2)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support activation checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.25 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


RECOMPILE_LIMIT = 64


def compile_blocks(model: nn.Module) -> None:
    """`torch.compile` each decoder block in place.

    Shapes are left to the compiler's default: static first, dynamic after a recompile (a validation batch
    of another size, the last short batch).

    Every block of every model shares one compiled frame (the checkpointing wrapper's, or the block
    class's forward), with one entry per variant: teacher or student block, gradient mode (a no-grad
    teacher forward, a training forward, the recompute under checkpointing), whether the input requires
    a gradient, which keyword arguments came. That is about ten in stage 2, more than dynamo's default
    limit of 8, past which it silently runs the remaining variants eagerly; the limit is raised to
    `RECOMPILE_LIMIT` (the number of blocks does not add variants)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for block in decoder_layers(model):
        block.compile()


def shard_model(model: nn.Module, mesh: object, param_dtype: torch.dtype | None, reshard_after_forward: bool) -> None:
    """`fully_shard` every decoder block, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters (embeddings, final norm, lm_head) stay gathered after forward: the chunked
    # logit losses call lm_head after the model's forward and again when recomputing chunks in backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def parallelize(
    student: nn.Module,
    teacher: nn.Module | None,
    mesh: object | None,
    activation_checkpointing: bool = False,
    mixed_precision: str | None = None,
    reshard_after_forward: bool = True,
    compile: bool = False,
) -> None:
    """Apply activation checkpointing (student only), `torch.compile` per decoder block (both models) and
    FSDP2 (student and teacher separately), in place.

    `mesh` is the data-parallel device mesh (`LightningModule.device_mesh["data_parallel"]`); None means a
    single process: no sharding. The teacher is never checkpointed (it runs without gradients).
    """
    if activation_checkpointing:
        enable_activation_checkpointing(student)
    if compile:
        compile_blocks(student)
        if teacher is not None:
            compile_blocks(teacher)
    if mesh is None:
        return
    dtype = mixed_precision_dtype(mixed_precision)
    shard_model(student, mesh, dtype, reshard_after_forward)
    if teacher is not None:
        shard_model(teacher, mesh, dtype, reshard_after_forward)
