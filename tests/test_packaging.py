"""The install layout: every package folder is listed in pyproject.toml, and the kernels are installed
under the project's import name only."""

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
    folders.add("hydrahead_lit.kernels")  # mapped from the top-level kernels/ folder
    assert set(cfg["packages"]) == folders
    assert cfg["package-dir"] == {"hydrahead_lit.kernels": "kernels"}


def _run(code: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_no_top_level_kernels_module(tmp_path: Path) -> None:
    """Installed, the project adds no importable top-level ``kernels`` (Hugging Face's package's name)."""
    res = _run("import hydrahead_lit, kernels", tmp_path)
    assert res.returncode != 0 and "No module named 'kernels'" in res.stderr, res.stderr


def test_triton_backend_found_next_to_another_kernels_package(tmp_path: Path) -> None:
    """A different ``kernels`` package first on sys.path does not hide the project's Triton op."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("IS_OTHER = True\n")
    code = (
        "import kernels, hydrahead_lit.kernels.gated_delta_rule as k\n"
        "from hydrahead_lit.ops.la_backend import _project_triton_import_error\n"
        "assert kernels.IS_OTHER and _project_triton_import_error() is None\n"
        "print(k.__file__)"
    )
    res = _run(code, tmp_path, env_path=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == ROOT / "kernels" / "gated_delta_rule.py"


def test_uninstalled_checkout_maps_the_kernels(tmp_path: Path) -> None:
    """Run from a checkout with only ``PYTHONPATH`` (no install, ``-S``: no site-packages finders for
    the project), ``hydrahead_lit.kernels`` is the checkout's kernels/ folder."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = f"import sys; sys.path.append({site!r})\nimport hydrahead_lit.kernels.checks as c; print(c.__file__)"
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == ROOT / "kernels" / "checks.py"
