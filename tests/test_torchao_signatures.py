"""Every torchao name we mirror has torchao's signature; docs/migrating_from_torchao.md's table is true.

The table in the doc is the one list of which torchao import maps to which of ours. torchao
(and ExecuTorch) are imported in one subprocess that dumps every signature as JSON: importing
torchao's X86 quantizer patches Inductor, and the packages must not depend on it.
"""

from __future__ import annotations

import functools
import importlib
import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "migrating_from_torchao.md"

# torchao modules whose whole __all__ must be mapped by some row of the table
COVERED_MODULES = [
    "torchao.quantization.pt2e",
    "torchao.quantization.pt2e.quantizer",
    "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
    "torchao.quantization.pt2e.quantizer.embedding_quantizer",
    "torchao.quantization.pt2e.lowering",
    "torchao.quantization.pt2e.reference_representation_rewrite",
    "torchao.quantization.pt2e.quantize_pt2e",
    "torchao.quantization.pt2e.export_utils",
    "torchao.quantization.pt2e.graph_utils",
]

_FORWARD = "nn.Module.__call__ passes the tensor positionally; ours names it x, torchao X"
_KWARGS = ("torchao's **kwargs only travel up to ObserverBase.__init__(dtype, is_dynamic), which "
           "takes no others: an unknown keyword is a TypeError in both")
# "name", "Class.__init__" or "Class.method" -> why it differs on purpose; each key also
# appears in the first column of the doc's "Signature differences" table
EXCEPTIONS: dict[str, str] = {
    **{f"{c}.forward": _FORWARD for c in (
        "FakeQuantize", "FixedQParamsFakeQuantize", "FixedQParamsObserver",
        "FusedMovingAvgObsFakeQuantize", "LearnableFakeQuantize")},
    **{f"{c}.__init__": _KWARGS for c in (
        "FixedQParamsObserver", "HistogramObserver", "MinMaxObserver", "PerChannelMinMaxObserver",
        "UniformQuantizationObserverBase")},
    "HistogramObserver.reset_histogram": "a step inside torchao's histogram update, not API; "
                                         "ours combines histograms in one method",
    "_is_conv_node": "a documented equivalent under our name (pt2e.graph.is_conv_node); its "
                     "argument is node, torchao's n",
    "_is_conv_transpose_node": "as _is_conv_node (pt2e.graph.is_conv_transpose_node)",
}

# Accidental differences found by this test and reported, not yet fixed: the test fails when
# one disappears (remove it here) or a new one appears. Keys as in EXCEPTIONS.
ACCIDENTAL: dict[str, str] = {}

# Describes a name: its signature(s), normalised so torchao's and ours compare (a default that
# is a class or function compares by name, a partial by its function and bound arguments).
# Run as is in the torchao subprocess and here.
DESCRIBE = r'''
import enum, functools, inspect, typing

def _default(v):
    if v is inspect.Parameter.empty:
        return "<required>"
    p = getattr(v, "p", None)
    if isinstance(p, functools.partial):
        v = p
    if isinstance(v, functools.partial):
        kw = ", ".join(f"{k}={_default(x)}" for k, x in sorted(v.keywords.items()))
        return f"partial({_default(v.func)}, {kw})"
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if isinstance(v, (type, type(len), type(_default))) or callable(v) and hasattr(v, "__name__"):
        return getattr(v, "__qualname__", v.__name__).rsplit(".", 1)[-1]
    if isinstance(v, (bool, int, float, str, type(None))):
        return repr(v)
    return repr(v) if type(v).__module__ == "torch" else f"<{type(v).__name__}>"

def _params(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, _default(p.default)] for p in sig.parameters.values()]

_BASES = ("torch.nn", "builtins", "enum", "abc", "typing", "torch._C")

def _methods(cls):
    out = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith(_BASES):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") or name in out:
                continue
            fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            if inspect.isfunction(fn):
                out[name] = _params(fn)
    return out

def _alias_args(obj):
    return sorted(getattr(a, "__name__", str(a)) for a in typing.get_args(obj))

def describe(obj):
    if typing.get_origin(obj) is not None:  # Union[...] and X | Y alike
        return {"kind": "alias", "args": _alias_args(obj)}
    p = getattr(obj, "p", None)
    if isinstance(p, functools.partial) or isinstance(obj, functools.partial):
        return {"kind": "partial", "value": _default(obj)}
    if isinstance(obj, type):
        if issubclass(obj, enum.Enum):
            return {"kind": "enum", "members": sorted(m.name for m in obj)}
        return {"kind": "class", "init": _params(obj), "methods": _methods(obj)}
    if callable(obj):
        return {"kind": "function", "params": _params(obj)}
    return {"kind": "value", "value": _default(obj)}
'''

TORCHAO_SCRIPT = DESCRIBE + r'''
import importlib, json, sys
rows, covered = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"names": {}, "all": {}}
for module, names in rows:
    mod = importlib.import_module(module)
    for name in names:
        out["names"][f"{module}:{name}"] = describe(getattr(mod, name))
for module in covered:
    out["all"][module] = list(importlib.import_module(module).__all__)
print(json.dumps(out))
'''

_IMPORT = re.compile(r"^from ([\w.]+) import (.+)$")


def _parse(cell: str) -> tuple[str, list[tuple[str, str]]]:
    """``from m import a, b as c`` -> ``("m", [("a", "a"), ("b", "c")])`` (imported, bound)."""
    match = _IMPORT.match(cell.strip().strip("`"))
    assert match, f"not a 'from ... import ...' cell: {cell!r}"
    names = []
    for part in match.group(2).split(","):
        real, _, alias = part.strip().partition(" as ")
        names.append((real, alias or real))
    return match.group(1), names


@functools.cache
def table() -> list[tuple[tuple[str, list[tuple[str, str]]], tuple[str, list[tuple[str, str]]]]]:
    """The doc's import table: one ((torchao module, names), (our module, names)) per row."""
    text = DOC.read_text().split("## Import paths", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`from "):
            rows.append((_parse(cells[0]), _parse(cells[1])))
    return rows


def pairs() -> list[tuple[str, str, str, str]]:
    """(torchao module, torchao name, our module, our name) for every name of every row."""
    out = []
    for (theirs, their_names), (ours, our_names) in table():
        assert [bound for _, bound in their_names] == [bound for _, bound in our_names], \
            f"row {theirs} -> {ours}: the two cells must bind the same names in the same order"
        out += [(theirs, t, ours, o) for (t, _), (o, _) in zip(their_names, our_names)]
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    rows: dict[str, list[str]] = {}
    for theirs, name, _, _ in pairs():
        rows.setdefault(theirs, []).append(name)
    done = subprocess.run(
        [sys.executable, "-c", TORCHAO_SCRIPT, json.dumps(list(rows.items())), json.dumps(COVERED_MODULES)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _describe() -> Any:
    namespace: dict[str, Any] = {}
    exec(DESCRIBE, namespace)
    return namespace["describe"]


def _our_cells() -> list[str]:
    text = DOC.read_text().split("## Import paths", 1)[1].split("\n## ", 1)[0]
    cells = [line.strip().strip("|").split("|") for line in text.splitlines()]
    return [c[1].strip().strip("`") for c in cells if len(c) == 2 and c[1].strip().startswith("`from ")]


@pytest.mark.parametrize("statement", _our_cells())
def test_each_rows_import_statement_runs(statement):
    namespace: dict[str, Any] = {}
    exec(statement, namespace)  # the exact line a user copies from the doc
    assert len(namespace) > 1


@pytest.mark.parametrize(("theirs", "name", "ours", "our_name"), pairs(),
                         ids=[f"{t}.{n}" for t, n, _, _ in pairs()])
def test_ours_imports(theirs, name, ours, our_name):
    module = importlib.import_module(ours)
    assert hasattr(module, our_name), f"{ours} has no {our_name} (torchao: {theirs}.{name})"


@pytest.mark.slow
def test_signatures_match_torchao(reference):
    describe = _describe()
    differ = []
    for theirs, name, ours, our_name in pairs():
        if name in EXCEPTIONS or name in ACCIDENTAL:
            continue
        obj = getattr(importlib.import_module(ours), our_name, None)
        if obj is None:
            differ.append(f"{ours}.{our_name}: missing (torchao: {theirs}.{name})")
            continue
        mine, ref = describe(obj), reference["names"][f"{theirs}:{name}"]
        differ += [f"{ours}.{our_name}: {d}" for d in _differences(name, mine, ref)]
    assert differ == [], "\n".join(differ)
    still = sorted(key for key in ACCIDENTAL if _still_differs(key, reference, describe))
    assert still == sorted(ACCIDENTAL), f"fixed, remove from ACCIDENTAL: {set(ACCIDENTAL) - set(still)}"


def _still_differs(key: str, reference: dict[str, Any], describe: Any) -> bool:
    name, _, member = key.partition(".")
    theirs, _, ours, our_name = next(p for p in pairs() if p[1] == name)
    mine, ref = describe(getattr(importlib.import_module(ours), our_name)), reference["names"][f"{theirs}:{name}"]
    if not member:
        return bool(_differences(name, mine, ref, skip=False))
    if member == "__init__":
        return _call_compatible(mine["init"], ref["init"]) is not None
    return _call_compatible(mine["methods"].get(member), ref["methods"][member]) is not None


def _call_compatible(mine: list[Any] | None, ref: list[Any] | None) -> str | None:
    """Why a call valid against torchao's parameters ``ref`` may fail against ``mine`` (``None``: it cannot).

    Same rule as Python's: each of torchao's parameters is ours too, with the same name,
    kind and default, positional ones at the same position; ours may add parameters
    that have defaults, or ``*args`` / ``**kwargs``, and must keep torchao's
    ``*args`` / ``**kwargs``.
    """
    if mine is None or ref is None:
        return None if mine == ref else f"ours {mine}, torchao {ref}"
    var = {"VAR_POSITIONAL", "VAR_KEYWORD"}
    fixed_mine = [p for p in mine if p[1] not in var]
    for i, (name, kind, default) in enumerate(p for p in ref if p[1] not in var):
        match = next((p for p in fixed_mine if p[0] == name), None)
        if match is None:
            return f"no parameter {name!r} (torchao: {ref})"
        if match[1:] != [kind, default]:
            return f"parameter {name!r}: ours {match[1:]}, torchao {[kind, default]}"
        if kind != "KEYWORD_ONLY" and fixed_mine.index(match) != i:
            return f"parameter {name!r} is at position {fixed_mine.index(match)}, torchao's at {i}"
    names = {p[0] for p in ref}
    extra = [p[0] for p in fixed_mine if p[0] not in names and p[2] == "<required>"]
    if extra:
        return f"extra required parameter(s) {extra} (torchao: {ref})"
    lost = [k for k in var if any(p[1] == k for p in ref) and not any(p[1] == k for p in mine)]
    if lost:
        return f"no {'/'.join(sorted(lost))} (torchao: {ref})"
    return None


def _differences(name: str, mine: dict[str, Any], ref: dict[str, Any], *, skip: bool = True) -> list[str]:
    if mine["kind"] != ref["kind"]:
        return [f"is a {mine['kind']}, torchao's is a {ref['kind']}"]
    if ref["kind"] == "function":
        why = _call_compatible(mine["params"], ref["params"])
        return [] if why is None else [why]
    if ref["kind"] != "class":
        return [] if mine == ref else [f"ours {mine}, torchao {ref}"]
    out = []
    skipped = {**EXCEPTIONS, **ACCIDENTAL} if skip else {}
    if f"{name}.__init__" not in skipped and (why := _call_compatible(mine["init"], ref["init"])):
        out.append(f"constructor: {why}")
    for method, params in ref["methods"].items():
        if f"{name}.{method}" in skipped:
            continue
        if method not in mine["methods"]:
            out.append(f"no method {method} (torchao: {params})")
        elif why := _call_compatible(mine["methods"][method], params):
            out.append(f"{method}: {why}")
    return out


@pytest.mark.slow
def test_every_torchao_public_name_has_a_row(reference):
    mapped = {(theirs, name) for theirs, name, _, _ in pairs()}
    # a name re-exported by a covered package counts if any row maps it from its defining path
    by_name = {name for _, name in mapped}
    missing = [f"{module}.{name}" for module, names in reference["all"].items() for name in names
               if (module, name) not in mapped and name not in by_name]
    assert missing == [], f"add rows to {DOC.relative_to(ROOT)} for: {missing}"


def test_every_exception_has_a_row_in_the_doc():
    text = DOC.read_text().split("## Signature differences", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    documented = {key for cell in first_cells for key in re.findall(r"`([\w.]+)`", cell)}
    assert documented == set(EXCEPTIONS)
