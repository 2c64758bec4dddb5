"""HydraHead: head-level full/linear attention hybrids converted from pretrained causal LMs."""

__version__ = "0.1.0"
