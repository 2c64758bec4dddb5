"""LightningModules of the pipeline stages (pre-training of a demo teacher, stages 1-3)."""

from hydrahead_lit.lit.alignment import AlignmentModule
from hydrahead_lit.lit.base import StageModule
from hydrahead_lit.lit.distillation import DistillationModule
from hydrahead_lit.lit.long_context import LongContextModule
from hydrahead_lit.lit.pretrain import PretrainModule

__all__ = ["AlignmentModule", "DistillationModule", "LongContextModule", "PretrainModule", "StageModule"]
