"""Run the project's Triton kernels on CPU through Triton's interpreter.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before ``kernels.*`` is
imported; the kernel modules are imported only by the tests of this folder (the model dispatches
to them only on CUDA), so setting it here leaves the other tests alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
