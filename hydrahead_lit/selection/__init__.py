"""Head selection: which KV groups keep full attention. Scores are pure functions of a model and probes.

Entry points: `make_probes`, `retrieval_scores`, `patching_scores`, `select_plan`.
"""

from hydrahead_lit.selection.alignment import alignment_group_scores
from hydrahead_lit.selection.budget import MODES, choose_groups, fa_budget
from hydrahead_lit.selection.combine import DEFAULT_WEIGHTS, NORMALIZATIONS, combine_scores, normalize
from hydrahead_lit.selection.methods import METHODS, Selection, needs_scores, select_plan, validate_budget
from hydrahead_lit.selection.patching import patching_effects, patching_scores
from hydrahead_lit.selection.probes import DEFAULT_PROBE_TASKS, ProbeBatch, batch_probes, make_probes
from hydrahead_lit.selection.retrieval import group_scores, probe_model, retrieval_scores

__all__ = [
    "DEFAULT_PROBE_TASKS",
    "DEFAULT_WEIGHTS",
    "METHODS",
    "MODES",
    "NORMALIZATIONS",
    "ProbeBatch",
    "Selection",
    "alignment_group_scores",
    "batch_probes",
    "choose_groups",
    "combine_scores",
    "fa_budget",
    "group_scores",
    "make_probes",
    "needs_scores",
    "normalize",
    "patching_effects",
    "patching_scores",
    "probe_model",
    "retrieval_scores",
    "select_plan",
    "validate_budget",
]
