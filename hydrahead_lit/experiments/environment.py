"""The versions and device an experiment's numbers were measured with (recorded in its summary)."""

from __future__ import annotations

import platform


def environment() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    env = {"python": platform.python_version(), "device": "cpu"}
    for pkg in ("torch", "lightning", "transformers", "triton", "flash-linear-attention", "gguf"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    return env
