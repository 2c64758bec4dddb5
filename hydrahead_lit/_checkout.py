"""``hydrahead_lit.kernels`` in a source checkout that is not installed.

The kernels live in the repository's top-level ``kernels/`` folder. An install maps that folder to
``hydrahead_lit.kernels`` (``package-dir`` in ``pyproject.toml``; an editable install's finder does
the same). Run from a checkout without installing (``PYTHONPATH=.``), nothing would, so the folder is
registered here under that name. A top-level ``kernels`` module is never created.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_NAME = "hydrahead_lit.kernels"


def alias_checkout_kernels() -> None:
    """Make ``hydrahead_lit.kernels`` importable when no install provides it."""
    if _NAME in sys.modules:
        return
    package = Path(__file__).resolve().parent
    if (package / "kernels" / "__init__.py").is_file():  # installed: the mapped folder is in place
        return
    for finder in sys.meta_path:  # an editable install's finder maps the name to the folder
        if finder is not importlib.machinery.PathFinder and _finds(finder):
            return
    source = package.parent / "kernels" / "__init__.py"
    if not source.is_file():
        return  # not a checkout: nothing to alias (imports of the kernels will fail clearly)
    spec = importlib.util.spec_from_file_location(_NAME, source, submodule_search_locations=[str(source.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)


def _finds(finder: object) -> bool:
    find_spec = getattr(finder, "find_spec", None)
    if find_spec is None:
        return False
    try:
        return find_spec(_NAME, None) is not None
    except Exception:  # a third-party finder that cannot answer for this name
        return False


alias_checkout_kernels()
