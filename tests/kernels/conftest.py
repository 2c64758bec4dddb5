"""The project's Triton kernels run on CPU through Triton's interpreter: `TRITON_INTERPRET=1` is set by
the root `tests/conftest.py`, before anything imports Triton (fla and transformers do, early)."""
