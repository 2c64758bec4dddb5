"""The import graph follows the layer order of the README's Layout section: no cycle, imports point down.

Every module under `hydrahead_lit/`, plus `main.py` and `data/prepare.py`, is parsed with `ast`; module-level and
function-level imports count alike (a function-level import is a dependency that runs later), and so does
`importlib.import_module("<literal>")`.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
KERNELS = "hydrahead_lit.kernels"
SCRIPTS = ("main.py", "data/prepare.py")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    path: str  # the importing file, relative to the repository
    line: int
    spelled: str  # the name as written in the import

    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.source} imports {self.spelled})"


@dataclass(frozen=True)
class Layer:
    rank: int  # 1 is the top
    name: str
    paths: tuple[str, ...]  # folders end with "/", single modules with ".py"


# ----- the module graph ---------------------------------------------------------------------------------------
def module_name(rel: str) -> str:
    """`hydrahead_lit/eval/ruler.py` -> `hydrahead_lit.eval.ruler`."""
    parts = list(Path(rel).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_project(name: str) -> bool:
    return name.split(".")[0] == "hydrahead_lit"


def source_files() -> dict[str, str]:
    """Relative path -> module name of every parsed file."""
    files = sorted((ROOT / "hydrahead_lit").rglob("*.py"))
    rels = [f.relative_to(ROOT).as_posix() for f in files] + [s for s in SCRIPTS if (ROOT / s).is_file()]
    return {rel: (rel if rel in SCRIPTS else module_name(rel)) for rel in rels}


def _resolve(name: str, modules: set[str]) -> str:
    """The module an import of `name` loads: `name` itself, else its nearest enclosing project module."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, str]]:
    """(absolute name, name as spelled) for every module name an import statement can load."""
    if isinstance(node, ast.Import):
        return [(a.name, a.name) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            pkg = ".".join(base + ([node.module] if node.module else []))
            spelled = "." * node.level + (node.module or "")
        else:
            pkg = spelled = node.module or ""
        # `from pkg import name` loads pkg.name when that is a module, else pkg (`_resolve` walks up to it).
        return [(f"{pkg}.{a.name}", f"{spelled}.{a.name}") if a.name != "*" else (pkg, spelled) for a in node.names]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [(node.args[0].value, node.args[0].value)]
    return []


@functools.lru_cache(maxsize=1)
def import_graph() -> tuple[dict[str, str], list[Import]]:
    """(module -> file, every import of a project module by a project module other than itself)."""
    files = source_files()
    modules = set(files.values())
    owner = {m: rel for rel, m in files.items()}
    imports: dict[tuple[str, str, int], Import] = {}  # one per statement and imported module
    for rel, module in files.items():
        tree = ast.parse((ROOT / rel).read_text(), filename=rel)
        for node in ast.walk(tree):
            for name, spelled in _imported_names(node, module, rel.endswith("__init__.py")):
                if not is_project(name):
                    continue
                target = _resolve(name, modules)
                if target != module and target in modules:
                    imports.setdefault((target, rel, node.lineno), Import(module, target, rel, node.lineno, spelled))
    return owner, sorted(imports.values(), key=lambda i: (i.path, i.line, i.target))


def find_cycles(imports: list[Import]) -> list[list[Import]]:
    """One cycle (as its edges) for every strongly connected group of modules (Tarjan's algorithm)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for group in sorted(groups):  # the shortest way from the group's first module back to itself, inside the group
        members, start = set(group), group[0]
        came: dict[str, Import] = {}
        frontier, back = [start], None
        while frontier and back is None:
            nxt = []
            for v in frontier:
                for w, imp in sorted(edges.get(v, {}).items()):
                    if w == start:
                        back = imp
                        break
                    if w in members and w not in came:
                        came[w] = imp
                        nxt.append(w)
                if back is not None:
                    break
            frontier = nxt
        path, v = [back], back.source
        while v != start:
            path.append(came[v])
            v = came[v].source
        cycles.append(path[::-1])
    return cycles


# ----- the layers, read from the README -----------------------------------------------------------------------
def readme_layers() -> list[Layer]:
    """The layer table of the README's `## Layout` section, top to bottom: rows `| N. name | `path`, ... |`."""
    text = README.read_text()
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"{README} has no '## Layout' section: it states the layer order this test holds the code to"
    layers = []
    for row in re.findall(r"^\|(.+)\|\s*$", match.group(1), flags=re.M):
        cells = [c.strip() for c in row.split("|")]
        if m := re.fullmatch(r"(\d+)\. (.+)", cells[0]):
            paths = tuple(re.findall(r"`([\w./]+(?:/|\.py))`", cells[-1]))
            layers.append(Layer(int(m.group(1)), m.group(2), paths))
    ranks = [layer.rank for layer in layers]
    assert ranks and ranks == list(range(1, len(ranks) + 1)), (
        f"the README's Layout section must number its layers 1, 2, ... from the top; found {ranks}"
    )
    return layers


def layer_of(module: str, path: str, layers: list[Layer]) -> Layer | None:
    """The layer whose listed path is the longest one holding `path`."""
    best, best_len = None, -1
    for layer in layers:
        for p in layer.paths:
            if p.endswith(".py"):
                holds = path == p
            else:  # a folder
                holds = path.startswith(p)
            if holds and len(p) > best_len:
                best, best_len = layer, len(p)
    return best


# ----- the tests ----------------------------------------------------------------------------------------------
def test_the_checker_finds_planted_cycles_and_reads_relative_imports() -> None:
    def imp(a: str, b: str) -> Import:
        return Import(a, b, a, 1, b)

    edges = [imp("a", "b"), imp("b", "c"), imp("c", "a"), imp("c", "d"), imp("d", "e"), imp("e", "d"), imp("x", "a")]
    cycles = find_cycles(edges)
    assert [[(i.source, i.target) for i in c] for c in cycles] == [[("a", "b"), ("b", "c"), ("c", "a")],
                                                                  [("d", "e"), ("e", "d")]]  # fmt: skip
    assert find_cycles([imp("a", "b"), imp("b", "c"), imp("a", "c")]) == []
    tree = ast.parse("from .gdn_common import x\nfrom . import fusion_norm\nfrom ..ops import la_backend")
    names = [n for node in tree.body for n, _ in _imported_names(node, "hydrahead_lit.kernels.gdn_fwd", False)]
    assert names == ["hydrahead_lit.kernels.gdn_common.x", "hydrahead_lit.kernels.fusion_norm",
                     "hydrahead_lit.ops.la_backend"]  # fmt: skip
    modules = {"hydrahead_lit", "hydrahead_lit.kernels", "hydrahead_lit.kernels.gdn_common"}
    assert _resolve("hydrahead_lit.kernels.gdn_common.x", modules) == "hydrahead_lit.kernels.gdn_common"
    assert _resolve("hydrahead_lit.HeadPlan", modules) == "hydrahead_lit"


def test_the_readme_layers_cover_every_module() -> None:
    owner, _ = import_graph()
    layers = readme_layers()
    missing = sorted(f"{path} ({m})" for m, path in owner.items() if layer_of(m, path, layers) is None)
    assert not missing, f"modules in no layer of the README's Layout section (add them to its table): {missing}"


def test_no_import_cycle() -> None:
    _, imports = import_graph()
    cycles = find_cycles(imports)
    text = "\n".join(
        " -> ".join([c[0].source, *(i.target for i in c)]) + "\n    " + "\n    ".join(i.where() for i in c)
        for c in cycles
    )
    assert not cycles, f"{len(cycles)} import cycle(s); break each one (move what both need down a layer):\n{text}"


def test_imports_point_down_the_layers() -> None:
    owner, imports = import_graph()
    layers = readme_layers()
    wrong = []
    for imp in imports:
        src, dst = layer_of(imp.source, owner[imp.source], layers), layer_of(imp.target, owner[imp.target], layers)
        if src is not None and dst is not None and src.rank > dst.rank:
            wrong.append(f"{imp.where()}: layer {src.rank} ({src.name}) imports layer {dst.rank} ({dst.name})")
    order = ", ".join(f"{layer.rank}. {layer.name}" for layer in layers)
    assert not wrong, f"imports against the README's layer order ({order}):\n" + "\n".join(wrong)


def test_kernels_import_only_their_siblings() -> None:
    _, imports = import_graph()
    inward = [i.where() for i in imports if i.source.startswith(KERNELS) and not i.target.startswith(KERNELS)]
    assert not inward, "the kernels import nothing from hydrahead_lit but other kernels; found:\n" + "\n".join(inward)


def test_nothing_imports_the_bare_name_kernels() -> None:
    """`kernels` is another package's import name (Hugging Face's hub kernels): ours are `hydrahead_lit.kernels`."""
    _, imports = import_graph()
    bare = sorted({i.where() for i in imports if i.spelled == "kernels" or i.spelled.startswith("kernels.")})
    assert not bare, f"imports of the bare name 'kernels' (spell it {KERNELS}):\n" + "\n".join(bare)


_PROBE = """
import importlib.util, json, sys
out = {"installed": importlib.util.find_spec("hydrahead_lit") is not None}
try:
    import kernels
    out["kernels"] = getattr(kernels, "__file__", None) or "(namespace package)"
except ModuleNotFoundError as err:
    out["kernels"] = None
    out["error"] = str(err)
if out["installed"]:
    out["project_kernels"] = importlib.util.find_spec("hydrahead_lit.kernels") is not None
    loaded = sys.modules.get("kernels")  # importing the project must not register a top-level name either
    out["after_import"] = getattr(loaded, "__file__", None) if loaded is not None else None
print(json.dumps(out))
"""


@pytest.mark.parametrize("where", ["outside", "root"])
def test_the_project_has_no_top_level_kernels_module(tmp_path, where: str) -> None:
    """A fresh interpreter outside the checkout, and one started in the repository root (where `python -m pytest` and
    `python -m hydrahead_lit...` put the root first on sys.path): `import kernels` finds no module of the project's
    (no such module, or Hugging Face's package, which `transformers` >= 5.25 imports at start-up), and the project's
    kernels import as `hydrahead_lit.kernels`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout is not on sys.path
    cwd = ROOT if where == "root" else tmp_path
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    if not out["installed"]:
        pytest.skip(f"hydrahead_lit is not installed in {sys.executable} (pip install -e .)")

    def ours(file: str | None) -> bool:  # a module of the checkout, not of an installed package (.venv is under ROOT)
        if file is None:
            return False
        path = Path(file).resolve()
        return path.is_relative_to(ROOT) and "site-packages" not in path.parts

    assert not ours(out["kernels"]), (
        f"`import kernels` ({where} the checkout) loads a module of the checkout ({out['kernels']}), not Hugging "
        f"Face's package: the project's kernels must import only as {KERNELS}"
    )
    assert out["kernels"] is not None or out["error"] == "No module named 'kernels'", out
    assert not ours(out["after_import"]), f"importing {KERNELS} registers a top-level 'kernels': {out}"
    assert out["project_kernels"], f"{KERNELS} is not importable from the installed project"
