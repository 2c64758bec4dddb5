"""The install layout: every package folder is listed in pyproject.toml, and the Triton kernels are a
package inside the project (never a top-level ``kernels``, Hugging Face's package's name)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_folder() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hydrahead_lit").rglob("__init__.py")}
    assert set(cfg["packages"]) == folders
    assert "package-dir" not in cfg  # every package is the folder of its name
    assert not (ROOT / "kernels").exists(), "a top-level kernels/ hides Hugging Face's kernels package"


def test_uninstalled_checkout_imports_the_kernels(tmp_path: Path) -> None:
    """Run from a checkout with only ``PYTHONPATH`` (no install, ``-S``: no site-packages finders for
    the project), ``hydrahead_lit.kernels`` is the checkout's folder."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = f"import sys; sys.path.append({site!r})\nimport hydrahead_lit.kernels.checks as c; print(c.__file__)"
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == ROOT / "hydrahead_lit" / "kernels" / "checks.py"
