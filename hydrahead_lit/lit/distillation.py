"""`DistillationModule` (stage 2): the hybrid student learns from the frozen teacher end to end.

The student is built from the stage-1 twin student (`init_from`) and a head plan: the selection file
written by the head-selection callback (`head_selection`) or a baseline plan (`plan`). Loss:
`kd_weight * KL(teacher || student)` at a temperature, computed over chunks of tokens from the final
hidden states (`logit_losses`), plus optional `ce_weight * CE` and a normalised hidden-state
MSE (`hidden_weight`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import hydrahead_lit as hh
from hydrahead_lit.lit.base import StageModule
from hydrahead_lit.lit.linear_losses import logit_losses
from hydrahead_lit.lit.losses import hidden_state_loss
from hydrahead_lit.lit.models import load_student, load_teacher, student_spec, teacher_config
from hydrahead_lit.modeling.plan import HeadPlan

PLAN_METHODS = ("all_la", "all_fa", "layerwise", "random", "manual")


def baseline_plan(config: Any, spec: dict[str, Any]) -> HeadPlan:
    """A plan from `{method: all_la | all_fa | layerwise | random | manual, ...}` (the baselines)."""
    spec = dict(spec)
    method = spec.pop("method", None)
    if method == "all_la":
        plan = HeadPlan.all_la(config)
    elif method == "all_fa":
        plan = HeadPlan.all_fa(config)
    elif method == "layerwise":
        if "fa_layers" not in spec:
            raise ValueError("plan method 'layerwise' needs fa_layers: [layer indices that keep full attention]")
        plan = HeadPlan.layerwise(config, list(spec.pop("fa_layers")))
    elif method == "random":
        if "ratio" not in spec:
            raise ValueError("plan method 'random' needs ratio (LA:FA heads, e.g. 7 for 7:1) and optionally seed")
        plan = HeadPlan.random(config, float(spec.pop("ratio")), int(spec.pop("seed", 0)))
    elif method == "manual":
        groups = spec.pop("fa_groups", None)
        if groups is None:
            raise ValueError("plan method 'manual' needs fa_groups: {layer: [KV groups]}")
        if isinstance(groups, dict):
            groups = {int(k): v for k, v in groups.items()}
        plan = HeadPlan.from_fa_groups(config, groups)
    else:
        raise ValueError(f"plan.method must be one of {', '.join(PLAN_METHODS)}; got {method!r}")
    if spec:
        raise ValueError(f"unknown plan option(s) {sorted(spec)} for method {method!r}")
    return plan


def resolve_plan(config: Any, head_selection: str | None, plan: dict[str, Any] | None) -> HeadPlan:
    """The stage-2 head plan from exactly one of a selection file and a baseline plan spec."""
    if head_selection is not None and plan is not None:
        raise ValueError("give either head_selection (a selection file) or plan (a baseline), not both")
    if head_selection is None and plan is None:
        raise ValueError(
            "stage 2 needs a head plan: set head_selection: <stage-1 run>/head_selection.json (written by the "
            "head-selection callback at the end of stage 1) or a baseline plan: {method: all_la | layerwise | random}"
        )
    result = HeadPlan.load(head_selection) if head_selection is not None else baseline_plan(config, plan)
    result.check_compatible(config)
    return result


class DistillationModule(StageModule):
    stage = "distillation"

    def __init__(
        self,
        teacher: str,
        init_from: str | None = None,
        head_selection: str | None = None,
        plan: dict[str, Any] | None = None,
        kd_weight: float = 1.0,
        ce_weight: float = 0.0,
        hidden_weight: float = 0.0,
        temperature: float = 1.0,
        chunk_size: int = 1024,
        teacher_dtype: str = "float32",
        la: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            teacher: local directory of the teacher (Hugging Face format).
            init_from: the stage-1 twin student export (`<stage-1 run>/student`); a stage-2 export continues as is;
                None converts the teacher directly (skips stage 1: an ablation).
            head_selection: selection file (`head_selection.json`) or plain plan JSON.
            plan: baseline plan instead: {method: all_la | all_fa | layerwise (fa_layers) | random (ratio, seed) |
                manual (fa_groups)}.
            kd_weight: weight of KL(teacher || student).
            ce_weight: weight of the next-token cross entropy on the data.
            hidden_weight: weight of the normalised hidden-state MSE over layers.
            temperature: distillation temperature (the KL is scaled by temperature^2).
            chunk_size: tokens per chunk of the logit losses (bounds logit memory).
            teacher_dtype: dtype of the frozen teacher.
            la: LA head options when init_from is None (otherwise those the twins were trained with).
            **kwargs: see `StageModule` (lr, warmup_steps, trainable, ...).
        """
        super().__init__(**kwargs)
        config = teacher_config(teacher)
        self.plan: HeadPlan | None = None
        spec = student_spec(init_from) if init_from is not None else None
        if spec is not None and not spec.get("twins"):
            if head_selection is not None or plan is not None:
                raise ValueError(
                    f"init_from {init_from} is already a converted student (plan inside); drop head_selection/plan "
                    "or point init_from at the stage-1 twin student"
                )
        else:
            self.plan = resolve_plan(config, head_selection, plan)
        if min(kd_weight, ce_weight, hidden_weight) < 0 or kd_weight + ce_weight + hidden_weight == 0:
            raise ValueError("kd_weight, ce_weight, hidden_weight must be >= 0 and not all 0")
        self.teacher_path, self.init_from = teacher, init_from
        self.la_config = hh.LAConfig.from_dict(la)
        self._student_plan = self.plan.to_dict() if self.plan is not None else spec["plan"]

    def _record_plan(self) -> dict | None:
        return self._student_plan

    @property
    def tokenizer_source(self) -> str | None:
        return self.teacher_path

    def _build_models(self) -> None:
        hp = self.hparams
        self.teacher = load_teacher(self.teacher_path, hp.teacher_dtype)
        if self.init_from is None:
            source = load_teacher(self.teacher_path, hp.dtype)
            self.student = hh.convert(source, self.plan, la_config=self.la_config, inplace=True)
        elif self.plan is None:
            self.student = load_student(self.init_from, hp.dtype)
        else:
            twin = load_student(self.init_from, hp.dtype)
            self.student = hh.convert(twin, self.plan, inplace=True)
        self.student.train()

    def _loss(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        hp = self.hparams
        x, y, mask = self.split_batch(batch)
        with torch.no_grad():
            t_out = self.teacher(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        s_out = self.student(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        loss, ce, kl = logit_losses(
            s_out.hidden_states[-1], self.student.lm_head, y, mask,
            t_out.hidden_states[-1], self.teacher.lm_head, hp.temperature, hp.chunk_size,
            ce_weight=hp.ce_weight, kd_weight=hp.kd_weight, fused=hp.fused_loss,
        )  # fmt: skip
        logs = {"kl": kl, "ce": ce}
        if hp.hidden_weight > 0:
            hidden = hidden_state_loss(s_out.hidden_states[1:], t_out.hidden_states[1:], mask)
            loss = loss + hp.hidden_weight * hidden
            logs["hidden"] = hidden
        sync = prefix == "val"
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "train", sync_dist=sync)
        for name, value in logs.items():
            self.log(f"{prefix}/{name}", value, sync_dist=sync)
        if prefix == "val":
            self.record_val_ce(ce, mask.sum())
        return loss
