"""Bad command lines and configs reported in one line that names the key.

jsonargparse reports a bad value inside a `class_path` section as a nested "Does not validate against
any of the Union subtypes" report under the full usage text; `condense_parser_error` extracts the key
path and the reason (`model.lr: expected a float, got 'abc'`). `describe_error` does the same for an
exception raised while the model, data or trainer are built or checked, preferring the project's own
message (which says what to do) over the parser's wrapping of it.
"""

from __future__ import annotations

import re
import traceback

_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS = re.compile(r"Problem with given class_path '([^']+)':")
_GIVEN_CLASS = re.compile(r"Given value: Namespace\(class_path='([^']+)'")
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:")


def _clean(text: str) -> str:
    """`<class 'float'>` -> `float`, `typing.Any` -> `Any`, whitespace folded."""
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = text.replace("typing.", "").replace("NoneType", "None")
    return " ".join(text.split())


def _reason(lines: list[str]) -> str:
    """The reason in the lines after the innermost key: a plain message, or a union's alternatives."""
    expected, given, plain = [], None, []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if line.startswith("Given value:"):
            given = line.removeprefix("Given value:").strip()
        elif line.startswith("- Expected a "):
            expected.append(_clean(line.removeprefix("- Expected a ")))
        elif line.startswith("- "):
            plain.append(_clean(line[2:]))
        else:
            plain.append(_clean(line))
    if plain:
        return plain[0]
    if expected:
        got = f", got {given}" if given is not None and len(given) < 80 else ""
        return f"expected {' or '.join(dict.fromkeys(expected))}{got}"
    return "invalid value"


def condense_parser_error(message: str) -> str:
    """One line `key.path: reason` from a jsonargparse error report."""
    lines = message.strip().splitlines()
    keys: list[str] = []
    start, indent = 0, -1
    owner = None
    for i, line in enumerate(lines):
        m = _KEY.search(line) or _CLASS.search(line)
        if m is None:
            continue
        if m.re is _KEY:
            keys.append(m.group(1))
        else:
            owner = m.group(1)
        start, indent = i + 1, len(line) - len(line.lstrip())
    if not keys:
        return _clean(lines[0]) if lines else "invalid command line"
    body = []  # the innermost report: the lines indented under its key
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    reason = _reason(body)
    key = ".".join(keys)
    m = re.match(r"Option '([^']+)' is not accepted", reason)
    if m:
        return f"{key}.{m.group(1)}: not an option of {owner or key}"
    m = re.match(r"the following arguments are required: (.+)", reason)
    if m:
        names = [n.strip() for n in m.group(1).split(",")]
        return f"{key}.{names[0]}: required, no value given" if len(names) == 1 else f"{key}: required: {m.group(1)}"
    m = re.match(r"Expected a (.+?)\. Got value: (.*)", reason)
    if m:
        reason = f"expected {m.group(1)}, got {m.group(2)!r}"
    return f"{key}: {reason}"


def _from_project(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "hydrahead_lit" in frames[-1].filename.replace("\\", "/").split("/")


def _section(class_path: str) -> str | None:
    """The section ("model" or "data") for a class path of a LightningModule or LightningDataModule."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    from lightning.pytorch import LightningDataModule, LightningModule

    if isinstance(cls, type) and issubclass(cls, LightningModule):
        return "model"
    if isinstance(cls, type) and issubclass(cls, LightningDataModule):
        return "data"
    return None


def describe_error(exc: BaseException) -> str:
    """One line for an exception raised while a run is built or checked (before it starts)."""
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    own = next((c for c in reversed(chain) if isinstance(c, ValueError) and _from_project(c)), None)
    outer = str(exc)
    if own is None:
        return condense_parser_error(outer) if "Parser key" in outer else " ".join(outer.split())
    message = " ".join(str(own).split())
    m = _GIVEN_CLASS.search(outer)
    if m:  # raised while jsonargparse instantiated a class_path section
        section = _section(m.group(1))
        return f"{section + ' ' if section else ''}{m.group(1)}: {message}"
    return message
