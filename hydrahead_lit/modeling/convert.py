"""Teacher -> HydraHead student conversion with parameter reuse and head permutation.

`convert(teacher, plan)` copies the teacher, permutes each layer's heads so the plan's FA groups come
first (rows of q/k/v, columns of o_proj: the function is unchanged), and gives the remaining heads
Gated DeltaNet twins initialised from the teacher's own projections. Passing a stage-1 *twin* student
instead of a teacher takes the LA heads from its trained twins. `convert(teacher, None, twins=True)`
builds that stage-1 student: every head keeps FA and gets an LA twin.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from hydrahead_lit.modeling.arch import check_supported, decoder_layers, resolve_fa_implementation
from hydrahead_lit.modeling.attention import HybridAttention
from hydrahead_lit.modeling.auto import adopt_student_config
from hydrahead_lit.modeling.linear_heads import GatedDeltaNetHeads, LAConfig
from hydrahead_lit.modeling.plan import HeadPlan
from hydrahead_lit.modeling.student import (
    HYDRAHEAD_CONFIG_KEY,
    base_class,
    hydrahead_spec,
    install_padding_hook,
    student_class,
)


def attention_layout(attn: nn.Module) -> dict:
    """Bias and q/k-norm layout of a teacher attention module (differs between families: Qwen2 has
    q/k/v biases but no o_proj bias, Qwen3 has per-head q/k RMSNorms)."""
    return {
        "qkv_bias": attn.q_proj.bias is not None,
        "o_bias": attn.o_proj.bias is not None,
        "qk_norm": getattr(attn, "q_norm", None) is not None,
    }


def _copy_rows(dst: nn.Linear, src: nn.Linear, rows: Tensor) -> None:
    dst.weight.copy_(src.weight[rows])
    if dst.bias is not None:
        dst.bias.copy_(src.bias[rows])


def _head_rows(heads: list[int], head_dim: int, device: torch.device) -> Tensor:
    idx = torch.tensor(heads, dtype=torch.long, device=device)
    return (idx[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


@torch.no_grad()
def teacher_head_rms(model: nn.Module, input_ids: Tensor | None = None, seed: int = 0) -> list[Tensor]:
    """Per layer, the per-channel RMS of each head's attention output (the input of o_proj), [H, D].

    Measured on `input_ids`, or on 256 random token ids when none are given (scale statistics only).
    """
    config = model.config
    n_heads = config.num_attention_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    if input_ids is None:
        gen = torch.Generator().manual_seed(seed)  # a CPU generator: name the device, as Lightning's
        input_ids = torch.randint(0, config.vocab_size, (1, 256), generator=gen, device="cpu")  # may default to cuda
    device = next(model.parameters()).device
    stats: dict[int, Tensor] = {}
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):

        def hook(_m: nn.Module, args: tuple, i: int = i) -> None:
            x = args[0].float().reshape(-1, n_heads, D)
            stats[i] = x.pow(2).mean(0).sqrt()

        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        model(input_ids=input_ids.to(device))
    finally:
        for h in hooks:
            h.remove()
    return [stats[i] for i in range(len(stats))]


def _la_from_teacher(attn: nn.Module, heads: list[int], group_size: int, cfg: LAConfig, D: int) -> GatedDeltaNetHeads:
    """LA heads whose q/k/v (and q/k norms) are the teacher's rows for `heads` (GQA k/v copied per head)."""
    hidden = attn.q_proj.in_features
    qk_eps = getattr(attn.q_norm, "variance_epsilon", None) if hasattr(attn, "q_norm") else None
    la = GatedDeltaNetHeads(hidden, len(heads), D, cfg, bias=attn.q_proj.bias is not None, qk_norm_eps=qk_eps)
    la.to(device=attn.q_proj.weight.device, dtype=attn.q_proj.weight.dtype)
    dev = attn.q_proj.weight.device
    _copy_rows(la.q_proj, attn.q_proj, _head_rows(heads, D, dev))
    groups = [h // group_size for h in heads]
    _copy_rows(la.k_proj, attn.k_proj, _head_rows(groups, D, dev))
    _copy_rows(la.v_proj, attn.v_proj, _head_rows(groups, D, dev))
    if la.q_norm is not None:
        la.q_norm.weight.copy_(attn.q_norm.weight)
        la.k_norm.weight.copy_(attn.k_norm.weight)
    return la


def _la_from_twins(twins: GatedDeltaNetHeads, heads: list[int], cfg: LAConfig) -> GatedDeltaNetHeads:
    """The trained stage-1 twins of `heads` (twin modules are indexed by original head)."""
    D = twins.head_dim
    la = GatedDeltaNetHeads(
        twins.q_proj.in_features,
        len(heads),
        D,
        cfg,
        bias=twins.q_proj.bias is not None,
        qk_norm_eps=None if twins.q_norm is None else twins.q_norm.eps,
    ).to(device=twins.q_proj.weight.device, dtype=twins.q_proj.weight.dtype)
    dev = twins.q_proj.weight.device
    rows = _head_rows(heads, D, dev)
    idx = torch.tensor(heads, dtype=torch.long, device=dev)
    for name in ("q_proj", "k_proj", "v_proj"):
        _copy_rows(getattr(la, name), getattr(twins, name), rows)
    _copy_rows(la.a_proj, twins.a_proj, idx)
    _copy_rows(la.b_proj, twins.b_proj, idx)
    la.A_log.copy_(twins.A_log[idx])
    la.dt_bias.copy_(twins.dt_bias[idx])
    if la.q_norm is not None:
        la.q_norm.weight.copy_(twins.q_norm.weight)
        la.k_norm.weight.copy_(twins.k_norm.weight)
    if (la.conv is None) != (twins.conv is None) or (la.g_proj is None) != (twins.g_proj is None):
        raise ValueError("the LA options (short_conv, output_gate) must match those the twins were trained with")
    if la.conv is not None:
        width = twins.num_heads * D
        la.conv.copy_(torch.cat([twins.conv[rows + j * width] for j in range(3)]))
    if la.g_proj is not None:
        _copy_rows(la.g_proj, twins.g_proj, rows)
    return la


@torch.no_grad()
def _build_layer(
    config: Any,
    layer_idx: int,
    attn: nn.Module,
    plan: HeadPlan | None,
    cfg: LAConfig,
    rms: Tensor | None,
    arch: dict,
) -> HybridAttention:
    n_heads = config.num_attention_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    gs = n_heads // (getattr(config, "num_key_value_heads", None) or n_heads)
    source_is_twin = isinstance(attn, HybridAttention)
    if source_is_twin and not attn.twins:
        raise ValueError("cannot convert a HydraHead student again: pass the teacher or a stage-1 twin student")
    twins = plan is None
    order = list(range(n_heads)) if twins else plan.head_order(layer_idx)
    n_fa = n_heads if twins else plan.num_fa_heads(layer_idx)
    n_la = n_heads if twins else n_heads - n_fa
    new = HybridAttention(config, layer_idx, n_fa, n_la, cfg, twins=twins, arch=arch)
    new.to(device=attn.o_proj.weight.device, dtype=attn.o_proj.weight.dtype)
    dev = attn.o_proj.weight.device
    fa_heads, la_heads = order[:n_fa], order[n_fa:] if not twins else order
    if n_fa:
        fa_groups = [h // gs for h in fa_heads[::gs]]
        _copy_rows(new.q_proj, attn.q_proj, _head_rows(fa_heads, D, dev))
        _copy_rows(new.k_proj, attn.k_proj, _head_rows(fa_groups, D, dev))
        _copy_rows(new.v_proj, attn.v_proj, _head_rows(fa_groups, D, dev))
        if new.q_norm is not None:
            new.q_norm.weight.copy_(attn.q_norm.weight)
            new.k_norm.weight.copy_(attn.k_norm.weight)
    cols = _head_rows(order, D, dev)
    new.o_proj.weight.copy_(attn.o_proj.weight[:, cols])
    if new.o_proj.bias is not None:
        new.o_proj.bias.copy_(attn.o_proj.bias)
    if n_la:
        if source_is_twin:
            new.la = _la_from_twins(attn.la, la_heads, cfg)
            new.fusion.la_gain.copy_(attn.fusion.la_gain[torch.tensor(la_heads, device=dev)])
        else:
            new.la = _la_from_teacher(attn, la_heads, gs, cfg, D)
            new.fusion.set_la_gain(rms[torch.tensor(la_heads, device=rms.device)])
    return new


def convert(
    model: nn.Module,
    plan: HeadPlan | None,
    la_config: LAConfig | None = None,
    calibration_ids: Tensor | None = None,
    twins: bool = False,
    inplace: bool = False,
    fa_implementation: str = "auto",
) -> nn.Module:
    """Build a HydraHead student from a teacher (or from a stage-1 twin student) and a head plan.

    `twins=True` (plan ignored, may be None) builds the stage-1 student: every head keeps the teacher's
    FA path and also gets an LA twin. `fa_implementation` names the FA heads' attention function ("auto":
    flash-attn when importable on CUDA, else the teacher's own, SDPA by default). The result is a
    `transformers` causal LM of the teacher's family (a subclass of its class) that saves with
    `save_pretrained` and loads with `load_student`.
    """
    spec = getattr(model.config, HYDRAHEAD_CONFIG_KEY, None)
    from_twins = spec is not None
    if from_twins and not spec.get("twins"):
        raise ValueError("cannot convert a HydraHead student again: pass the teacher or a stage-1 twin student")
    if not from_twins:
        check_supported(model)
    if twins:
        if from_twins:
            raise ValueError("the model already has LA twins")
        plan = HeadPlan.all_fa(model.config)
    elif plan is None:
        raise ValueError("a head plan is required (HeadPlan.from_fa_groups / all_fa / all_la / layerwise / random)")
    plan.check_compatible(model.config)
    cfg = la_config or (LAConfig.from_dict(spec["la"]) if from_twins else LAConfig())
    rms = None if from_twins else teacher_head_rms(model, calibration_ids)
    arch = spec["arch"] if from_twins else attention_layout(decoder_layers(model)[0].self_attn)
    student = model if inplace else copy.deepcopy(model)
    base_cls = base_class(spec["base_architecture"]) if from_twins else type(model)
    for i, layer in enumerate(decoder_layers(student)):
        layer.self_attn = _build_layer(
            student.config, i, layer.self_attn, None if twins else plan, cfg, None if rms is None else rms[i], arch
        )
    setattr(student.config, HYDRAHEAD_CONFIG_KEY, hydrahead_spec(base_cls, plan, cfg, twins, arch))
    student.__class__ = student_class(base_cls)
    adopt_student_config(student)  # saved as a HydraHead model type, loadable through the Auto classes
    install_padding_hook(student)
    impl = resolve_fa_implementation(student, fa_implementation)
    if impl != getattr(student.config, "_attn_implementation", None):
        student.set_attn_implementation(impl)
    return student
