"""Head selection as a pipeline step: score every KV group of the stage-1 twin model, choose the FA groups.

Runs at the end of fit (or once `at_step` optimizer steps are done) on every rank, because under FSDP each
forward is collective; rank 0's decision is broadcast and only rank 0 writes the JSON, the PNG and the
TensorBoard figure. The decision is kept in the callback's checkpoint state and in the JSON, so a resumed
run never recomputes it. See docs/selection.md for the scores and formulas.
"""

from __future__ import annotations

import json
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from hydrahead_lit.modeling.plan import HeadPlan, attention_shape
from hydrahead_lit.selection.alignment import alignment_group_scores
from hydrahead_lit.selection.combine import DEFAULT_WEIGHTS, NORMALIZATIONS, combine_scores
from hydrahead_lit.selection.heatmap import heatmap_figure
from hydrahead_lit.selection.methods import METHODS, SINGLE_SCORES, select_plan, validate_budget
from hydrahead_lit.selection.patching import PATCHING_METRICS, patching_effects
from hydrahead_lit.selection.probes import DEFAULT_PROBE_TASKS, batch_probes, make_probes
from hydrahead_lit.selection.retrieval import GROUP_REDUCTIONS, group_scores, hybrid_attentions, retrieval_scores

FORMAT_VERSION = 1

# Several selections at the end of one run (7:1, 3:1, whole layers) score the same weights on the same probes;
# the probe passes are most of a selection's cost, so their results are kept per model and reused while its
# weights are unchanged (every in-place update of a parameter bumps its version counter).
_PROBE_SCORES: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, tuple]] = weakref.WeakKeyDictionary()


def _probe_scores(student: torch.nn.Module, probes: Sequence[Any], batch_size: int, match: str) -> tuple:
    """(retrieval head scores, patching effects or None) of `student` on `probes`, computed once per weights."""
    key = (
        tuple(p._version for p in student.parameters()),
        tuple(tuple(s.full_ids) for s in probes),
        batch_size,
        match,
    )
    cached = _PROBE_SCORES.get(student)
    if cached is not None and cached[0] == key:
        return cached[1]
    batches = batch_probes(probes, batch_size)
    head = retrieval_scores(student, batches, match=match)
    effects = patching_effects(student, batches) if all(a.twins for a in hybrid_attentions(student)) else None
    _PROBE_SCORES[student] = (key, (head, effects))
    return head, effects


def _table(t: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in t.tolist()]


class HeadSelectionCallback(Callback):
    """Score KV groups on synthetic retrieval probes and write the chosen head plan to `output`.

    Args:
        output: JSON path, relative to `trainer.log_dir` or absolute (give an absolute path when the
            stage-2 config must find it). A heat map PNG is written next to it.
        method: one of `METHODS` ("hydrahead" combines the scores; the others are single scores or baselines).
        ratio: LA:FA heads (7.0 keeps one KV group in eight). Ignored by "all_la".
        mode: "global" (budget over the whole model) or "per_layer" (every layer meets the ratio).
        min_per_layer: FA groups every layer gets first in global mode.
        weights: score name -> weight for "hydrahead" (and to rank layers for "layerwise").
        tokenizer: "demo", a local tokenizer directory, a tokenizer object, or None to use
            `pl_module.tokenizer` / `trainer.datamodule.tokenizer`.
        at_step: run once `trainer.global_step` reaches it (else at the end of fit).
        overwrite: replace an existing JSON made with different settings (else that is an error).
    """

    def __init__(
        self,
        output: str = "head_selection.json",
        method: str = "hydrahead",
        ratio: float = 7.0,
        mode: str = "global",
        min_per_layer: int = 0,
        weights: dict[str, float] | None = None,
        normalization: str = "rank",
        probe_tasks: Sequence[str] = DEFAULT_PROBE_TASKS,
        probe_length: int = 512,
        num_probes: int = 16,
        probe_batch_size: int = 8,
        seed: int = 0,
        tokenizer: Any = None,
        group_reduce: str = "max",
        retrieval_match: str = "token",
        patching_metric: str = "nll",
        fa_layers: list[int] | None = None,
        at_step: int | None = None,
        overwrite: bool = False,
    ) -> None:
        checks = {
            "method": (method, METHODS),
            "normalization": (normalization, NORMALIZATIONS),
            "group_reduce": (group_reduce, GROUP_REDUCTIONS),
            "retrieval_match": (retrieval_match, ("token", "position")),
            "patching_metric": (patching_metric, PATCHING_METRICS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"HeadSelectionCallback: {name}={value!r} is not one of {allowed}")
        unknown = sorted(set(weights or {}) - set(SINGLE_SCORES))
        if unknown:
            raise ValueError(f"HeadSelectionCallback: weights name unknown score(s) {unknown}; scores: {SINGLE_SCORES}")
        if at_step is not None and at_step < 1:
            raise ValueError(f"at_step must be >= 1 (optimizer steps) or None, got {at_step}")
        if probe_length < 1 or num_probes < 1 or probe_batch_size < 1:
            raise ValueError("probe_length, num_probes and probe_batch_size must be >= 1")
        self.output = output
        self.method, self.ratio, self.mode, self.min_per_layer = method, float(ratio), mode, int(min_per_layer)
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.normalization, self.group_reduce = normalization, group_reduce
        self.retrieval_match, self.patching_metric = retrieval_match, patching_metric
        self.probe_tasks, self.probe_length, self.num_probes = list(probe_tasks), probe_length, num_probes
        self.probe_batch_size, self.seed, self.tokenizer = probe_batch_size, seed, tokenizer
        self.fa_layers = None if fa_layers is None else [int(i) for i in fa_layers]
        self.at_step, self.overwrite = at_step, overwrite
        self.done = False
        self.result: dict | None = None
        self._path: Path | None = None
        self._probes: list | None = None
        self._tok: Any = None

    # ----- settings and state ---------------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that decides the selection (an existing JSON is reused only when these match)."""
        s = {
            "method": self.method,
            "ratio": self.ratio,
            "mode": self.mode,
            "min_per_layer": self.min_per_layer,
            "weights": self.weights,
            "normalization": self.normalization,
            "group_reduce": self.group_reduce,
            "retrieval_match": self.retrieval_match,
            "patching_metric": self.patching_metric,
            "fa_layers": self.fa_layers,
            "probe": {"tasks": self.probe_tasks, "length": self.probe_length, "count": self.num_probes},
            "seed": self.seed,
        }
        return json.loads(json.dumps(s))  # as it reads back from the file

    @property
    def plan(self) -> HeadPlan | None:
        return None if self.result is None else HeadPlan.from_dict(self.result["plan"])

    @property
    def state_key(self) -> str:
        return f"HeadSelectionCallback[{self.output}]"

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "result": self.result}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        result = state_dict.get("result")
        if result is not None and result.get("settings") != self.settings() and not self.overwrite:
            raise ValueError(
                "the checkpoint holds a head selection made with other HeadSelectionCallback settings; resume with "
                "the same settings, or pass overwrite=True to select again"
            )
        if result is not None and result.get("settings") != self.settings():
            return  # overwrite=True: the saved decision is dropped and selection runs again
        self.done = bool(state_dict.get("done", False))
        self.result = result

    # ----- hooks ------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        out = Path(self.output)
        self._path = out if out.is_absolute() else Path(trainer.log_dir or trainer.default_root_dir) / out
        config = self._config(pl_module)
        if config is not None:  # else the student is built in configure_model: checked in on_fit_start
            self._validate(config)
        if self._tokenizer(trainer, pl_module) is None:
            raise ValueError(
                "HeadSelectionCallback needs a tokenizer for its probes: pass tokenizer='demo' or a local "
                "tokenizer directory, or give the LightningModule (or DataModule) a `tokenizer` attribute"
            )
        # build the probes now: a probe length too short for a task fails here, not after training
        self._probes = make_probes(
            self._tokenizer(trainer, pl_module), self.probe_tasks, self.probe_length, self.num_probes, self.seed
        )
        self._adopt_existing(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        student = self._student(pl_module)
        self._validate(student.config)
        if self.done:
            return
        attns = hybrid_attentions(student)
        if not all(a.twins or a.num_la_heads == 0 for a in attns):
            raise ValueError(
                "HeadSelectionCallback scores a model whose every head has its FA path: the stage-1 twin model "
                "(hh.convert(teacher, None, twins=True)), not a hybrid student"
            )
        twins = all(a.twins for a in attns)
        available = {"retrieval"} | ({"patching"} if twins else set())
        if hasattr(pl_module, "alignment_error"):
            available.add("alignment")
        if self.method in SINGLE_SCORES and self.method not in available:
            raise ValueError(
                f"method {self.method!r} needs the {self.method!r} score, which this run cannot compute "
                "(patching needs the stage-1 twin model; alignment needs `pl_module.alignment_error`)"
            )
        if self.method == "hydrahead" and not any(self.weights.get(k, 0) > 0 for k in available):
            raise ValueError(f"method 'hydrahead' needs a positive weight on one of {sorted(available)}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # checkpoint state is restored by now: a finished selection whose file is missing (a resumed run
        # logging to a new version directory) is written again from the saved state, not recomputed
        if self.done and self.result is not None and trainer.is_global_zero and not self._path.exists():
            self._write(trainer, self.result)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.at_step is not None and not self.done and trainer.global_step >= self.at_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done:
            self.run(trainer, pl_module)

    # ----- the selection --------------------------------------------------------------------------------
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Score, choose, broadcast rank 0's decision, write outputs (rank 0). Every rank must call it."""
        student = self._student(pl_module)
        result = self.compute(student, self._tokenizer(trainer, pl_module), getattr(pl_module, "alignment_error", None))
        result["global_step"] = trainer.global_step
        result = trainer.strategy.broadcast(result, src=0)
        if trainer.is_global_zero:
            self._write(trainer, result)
            print(format_selection(result, self._path), flush=True)
        trainer.strategy.barrier("head_selection")
        self.result, self.done = result, True
        return result

    def compute(self, student: torch.nn.Module, tokenizer: Any, alignment_error: Any = None) -> dict:
        """The selection record for `student` (a stage-1 twin model), without writing anything."""
        L, G, gs = attention_shape(student.config)
        scores: dict[str, torch.Tensor] = {}
        head_scores: dict[str, list] = {}
        extra: dict[str, list] = {}
        # baselines do not decide by the scores, but recording them lets runs be compared on one map
        probes = self._probes or make_probes(tokenizer, self.probe_tasks, self.probe_length, self.num_probes, self.seed)
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                head, effects = _probe_scores(student, probes, self.probe_batch_size, self.retrieval_match)
        finally:
            student.train(was_training)
        head_scores["retrieval"] = _table(head)
        scores["retrieval"] = group_scores(head, gs, self.group_reduce)
        if effects is not None:
            scores["patching"] = effects[self.patching_metric]
            other = next(m for m in PATCHING_METRICS if m != self.patching_metric)
            extra[f"patching_{other}"] = _table(effects[other])
        else:
            warnings.warn("the model has no LA twins: the patching score is skipped", stacklevel=2)
        if alignment_error is not None and not torch.isfinite(torch.as_tensor(alignment_error)).all():
            warnings.warn("alignment_error has NaN entries (no stage-1 step updated them): skipped", stacklevel=2)
        elif alignment_error is not None:
            scores["alignment"] = alignment_group_scores(alignment_error, L, G)
        elif self.weights.get("alignment", 0):
            warnings.warn("the LightningModule has no `alignment_error`: the alignment score is skipped", stacklevel=2)
        weights = {k: w for k, w in self.weights.items() if k in scores}
        selection = select_plan(
            self.method,
            scores,
            L,
            G,
            gs,
            self.ratio,
            self.mode,
            self.min_per_layer,
            weights,
            self.normalization,
            self.seed,
            self.fa_layers,
        )
        combined = combine_scores(scores, weights, self.normalization) if scores and any(weights.values()) else None
        settings = self.settings()
        return {
            "format_version": FORMAT_VERSION,
            "plan": selection.plan.to_dict(),
            "method": self.method,
            "ratio": self.ratio,
            "mode": self.mode,
            "scores": {k: _table(v) for k, v in scores.items()},
            "head_scores": head_scores,
            "extra_scores": extra,
            "combined": None if combined is None else _table(combined),
            "decision_score": None if selection.decision_score is None else _table(selection.decision_score),
            "probe": {**settings["probe"], "seed": self.seed},
            "chosen": selection.chosen,
            "info": selection.info,
            "settings": settings,
        }

    # ----- helpers --------------------------------------------------------------------------------------
    def _validate(self, config: Any) -> None:
        L, G, _ = attention_shape(config)
        try:
            validate_budget(self.method, L, G, self.ratio, self.mode, self.min_per_layer, self.fa_layers)
        except ValueError as e:
            raise ValueError(f"HeadSelectionCallback: the budget cannot be met on this model: {e}") from None
        if self.result is not None:
            HeadPlan.from_dict(self.result["plan"]).check_compatible(config)

    def _adopt_existing(self, trainer: pl.Trainer) -> None:
        """Reuse a finished selection with the same settings; refuse to replace a different one.

        Rank 0 reads the file and every rank follows its verdict (the file may not be on a shared disk).
        """
        verdict: tuple[str, Any] = ("none", None)
        if trainer.is_global_zero and self._path.is_file():
            try:
                existing = json.loads(self._path.read_text())
            except json.JSONDecodeError:
                existing = None
            if isinstance(existing, dict) and existing.get("settings") == self.settings() and "plan" in existing:
                verdict = ("adopt", existing)
            elif not self.overwrite:
                verdict = (
                    "error",
                    f"{self._path} exists and is not a head selection made with these settings; pass "
                    "overwrite=True to replace it, or choose another `output`",
                )
        kind, payload = trainer.strategy.broadcast(verdict, src=0)
        if kind == "error":
            raise ValueError(payload)
        if kind == "adopt":
            self.result, self.done = payload, True

    def _write(self, trainer: pl.Trainer, result: dict) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(result, indent=1) + "\n")
        maps = {k: torch.tensor(v) for k, v in result["scores"].items()}
        if result.get("combined") is not None:
            maps["combined"] = torch.tensor(result["combined"])
        if not maps:
            return
        plan = HeadPlan.from_dict(result["plan"])
        fig = heatmap_figure(maps, plan, title=f"head selection by {result['method']}: {plan} (FA groups boxed in red)")
        fig.savefig(self._path.with_suffix(".png"), dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "head_selection/heatmap", fig, global_step=trainer.global_step, close=False
                )
        import matplotlib.pyplot as plt

        plt.close(fig)

    @staticmethod
    def _student(pl_module: pl.LightningModule) -> torch.nn.Module:
        student = getattr(pl_module, "student", None)
        if student is None:
            raise ValueError(
                f"{type(pl_module).__name__} has no `student` attribute: HeadSelectionCallback scores the stage-1 "
                "twin model held in `pl_module.student`"
            )
        return student

    @staticmethod
    def _config(pl_module: pl.LightningModule) -> Any:
        for owner in ("student", "teacher"):
            config = getattr(getattr(pl_module, owner, None), "config", None)
            if config is not None:
                return config
        return None

    def _tokenizer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """The probes' tokenizer: the argument, else the module's / datamodule's tokenizer or tokenizer_source."""
        if self._tok is None:
            tok = self.tokenizer
            if tok is None:
                datamodule = getattr(trainer, "datamodule", None)
                tok = (
                    getattr(pl_module, "tokenizer", None)
                    or getattr(datamodule, "tokenizer", None)
                    or getattr(pl_module, "tokenizer_source", None)
                )
            self._tok = _load_tokenizer(tok) if isinstance(tok, (str, Path)) else tok
        return self._tok


def format_selection(result: dict, path: Path | None = None, limit: int = 16) -> str:
    """The chosen KV groups as a short table with their scores (at most `limit` rows) and where it is saved."""
    plan = HeadPlan.from_dict(result["plan"])
    names = [k for k in ("retrieval", "patching", "alignment") if k in result.get("scores", {})]
    decision = result.get("decision_score")
    cols = [*names, *(["decision"] if decision is not None else [])]
    lines = [f"head selection ({result['method']}, {plan.num_fa_groups}/{plan.total_groups} KV groups keep full "
             f"attention, KV cache {plan.kv_cache_fraction:.1%} of the teacher's):"]  # fmt: skip
    chosen = [(layer, g) for layer, groups in enumerate(plan.fa_groups) for g in groups]
    if chosen:
        lines.append("  " + "  ".join(f"{c:>10}" for c in ["layer", "KV group", *cols]))
        for layer, g in chosen[:limit]:
            values = [result["scores"][k][layer][g] for k in names] + ([decision[layer][g]] if decision else [])
            lines.append("  " + "  ".join([f"{layer:>10}", f"{g:>10}", *(f"{v:>10.3g}" for v in values)]))
        if len(chosen) > limit:
            lines.append(f"  ... and {len(chosen) - limit} more (all in the JSON)")
    else:
        lines.append("  none: every head becomes linear attention")
    if path is not None:
        lines.append(f"  saved to {path} (heat map: {path.with_suffix('.png')})")
    return "\n".join(lines)


def _load_tokenizer(spec: str | Path) -> Any:
    """ "demo" (the bundled tokenizer), a local tokenizer directory or a GGUF file; nothing is downloaded."""
    if str(spec) == "demo":
        from hydrahead_lit.data.demo import demo_tokenizer

        return demo_tokenizer()
    from hydrahead_lit.teachers import is_gguf, load_teacher_tokenizer

    if is_gguf(spec):  # a GGUF teacher file describes its tokenizer
        return load_teacher_tokenizer(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ValueError(f"tokenizer {str(spec)!r} is not a local directory (nothing is downloaded), a .gguf file "
                         "nor 'demo'")  # fmt: skip
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
