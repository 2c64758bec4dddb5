"""HydraHead: head-level full/linear attention hybrids converted from pretrained causal LMs.

Public API::

    import hydrahead_lit as hh
    plan = hh.HeadPlan.from_fa_groups(teacher.config, {0: [3], 1: [0]})
    student = hh.convert(teacher, plan)
    student.save_pretrained("out/student"); student = hh.load_student("out/student")
"""

from hydrahead_lit.modeling.auto import register_auto_classes
from hydrahead_lit.modeling.cache import HybridCache, cache_bytes
from hydrahead_lit.modeling.convert import convert, teacher_head_rms
from hydrahead_lit.modeling.linear_heads import LAConfig
from hydrahead_lit.modeling.plan import HeadPlan, fa_groups_for_ratio
from hydrahead_lit.modeling.student import is_student, load_student, student_class

register_auto_classes(student_class)  # AutoModelForCausalLM.from_pretrained(student_dir) builds the student

__version__ = "0.1.0"

__all__ = [
    "HeadPlan",
    "HybridCache",
    "LAConfig",
    "cache_bytes",
    "convert",
    "fa_groups_for_ratio",
    "is_student",
    "load_student",
    "teacher_head_rms",
]
