"""Pipeline callbacks: student export (stage hand-off) and head selection."""

from hydrahead_lit.callbacks.export import ExportStudent

__all__ = ["ExportStudent"]
from hydrahead_lit.callbacks.head_selection import HeadSelectionCallback as HeadSelectionCallback
