"""Configs scoped to a module name, module type or operator that the model does not have.

``set_module_name_qconfig("haed", config)`` with a typo matches no node, so the
config silently quantizes nothing. :func:`unmatched_scopes` finds such settings
before annotation and names the closest module names (or the module types and
operators the model does have); :class:`~quantizers.engine.TableQuantizer` warns
with them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

from torch.fx import GraphModule

from pt2e.graph import module_stack, qualified_type_name

__all__ = ["unmatched_scopes"]


def _short(type_name: str) -> str:
    return type_name.rpartition(".")[2]


def unmatched_scopes(
    model: GraphModule,
    *,
    module_names: Iterable[str] = (),
    module_types: Iterable[Any] = (),
    operators: Iterable[tuple[str, Any]] = (),
    operator_matches: Callable[[Any, Any], bool],
) -> list[str]:
    """One message per scoped setting that selects no node of ``model``.

    ``operators`` holds ``(setter name, operator key)`` pairs; ``operator_matches``
    says whether a node target matches a key.

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.head = torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.head(x)
    >>> gm = torch.export.export(M(), (torch.randn(1, 2),)).module()
    >>> unmatched_scopes(gm, module_names=["haed", "head"], operator_matches=lambda t, k: t == k)
    ["module name 'haed' matches no module of the model; did you mean 'head'?"]
    """
    paths: set[str] = set()
    types: set[str] = set()
    targets: set[Any] = set()
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        targets.add(node.target)
        for path, type_name in module_stack(node):
            paths.add(path)
            types.add(type_name)
    problems: list[str] = []
    for name in module_names:
        if any(p == name or p.startswith(name + ".") for p in paths):
            continue
        close = difflib.get_close_matches(name, sorted(p for p in paths if p), n=3, cutoff=0.5)
        hint = ("did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else (
            "the model's modules are " + ", ".join(f"'{p}'" for p in sorted(paths)[1:11] if p)
            if len(paths) > 1 else "the model has no named submodules")
        problems.append(f"module name '{name}' matches no module of the model; {hint}")
    for module_type in module_types:
        wanted = qualified_type_name(module_type)
        if wanted in types:
            continue
        present = sorted({_short(t) for t in types})
        close = difflib.get_close_matches(_short(wanted), present, n=3, cutoff=0.5)
        problems.append(
            f"module type {_short(wanted)} ({wanted}) is not in the model; "
            + (f"did you mean {' or '.join(close)}? " if close else "")
            + f"its module types are {', '.join(present) or 'none'}"
        )
    for where, key in operators:
        if any(operator_matches(t, key) for t in targets):
            continue
        shown = sorted(getattr(k, "__name__", str(k)) for k in (
            key if isinstance(key, (set, frozenset, list, tuple)) else [key]))
        problems.append(
            f"{where}({', '.join(shown)}): the model has no such operator, so this config "
            "quantizes nothing"
        )
    return problems
