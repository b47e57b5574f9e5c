"""Checks and clean-ups on the model ``torch.export`` hands us.

The input to ``prepare_pt2e`` is ``torch.export.export(m, args).module()``: a
``GraphModule`` of ATen ops. On torch 2.13 it also carries a ``_guards_fn``
``call_module`` node that checks input shapes; we keep it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from .errors import NotExportedModelError

__all__ = [
    "attr_value",
    "check_exported",
    "describe_node",
    "remove_dead_code",
    "capture_pre_autograd_graph",
]

PREPARED_FLAG = "_pt2e_prepared"
CONVERTED_FLAG = "_pt2e_converted"


def check_exported(model: Any, where: str) -> GraphModule:
    """Return ``model`` if it is an exported ``GraphModule``; otherwise explain how to get one."""
    if isinstance(model, torch.export.ExportedProgram):
        raise NotExportedModelError(
            f"{where} got a torch.export.ExportedProgram; pass its module instead: "
            "`torch.export.export(model, example_args).module()`"
        )
    if not isinstance(model, GraphModule):
        raise NotExportedModelError(
            f"{where} expects the GraphModule returned by "
            "`torch.export.export(model, example_args).module()`, got "
            f"{type(model).__module__}.{type(model).__qualname__}; export the model first"
        )
    if not any(n.op == "call_function" for n in model.graph.nodes):
        raise NotExportedModelError(
            f"{where} got a GraphModule with no operator calls; export the model with "
            "`torch.export.export(model, example_args).module()` (a symbolic_trace graph of "
            "module calls cannot be quantized)"
        )
    return model


def attr_value(model: torch.nn.Module, target: str) -> Any:
    """The object a ``get_attr`` node with ``target`` (``"layer.0.weight"``) reads."""
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def describe_node(node: Node) -> str:
    """Name a node for an error message: its name, what it calls, and its module path.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(2, 2)),
    ...                          (torch.randn(1, 2),)).module()
    >>> describe_node(next(n for n in gm.graph.nodes if n.op == "call_function"))
    "node 'linear' (call_function aten.linear.default, module '0')"
    """
    stack = node.meta.get("nn_module_stack") or {}
    path = str(list(stack.values())[-1][0]).replace("L['self'].", "") if stack else ""
    # OpOverloads print as "aten.linear.default"; plain callables by their name
    target = str(node.target) if hasattr(node.target, "_schema") else getattr(
        node.target, "__name__", str(node.target))
    where = f", module '{path}'" if path else ""
    return f"node '{node.name}' ({node.op} {target}{where})"


def remove_dead_code(model: GraphModule, *, recompile: bool = True) -> int:
    """Erase pure nodes whose result nobody uses (e.g. an unused BERT pooler).

    Unlike ``Graph.eliminate_dead_code`` it keeps every ``call_module`` node (the
    exported ``_guards_fn`` has no users but checks the inputs) and every node with
    side effects (in-place updates of buffers). Returns the number of nodes erased.
    Pass ``recompile=False`` when the caller recompiles once at the end.

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         unused = torch.tanh(x)
    ...         return x + 1
    >>> gm = torch.export.export(M(), (torch.randn(2),)).module()
    >>> remove_dead_code(gm)
    1
    """
    erased = 0
    for node in reversed(list(model.graph.nodes)):
        if node.op not in ("call_function", "call_method", "get_attr") or node.users:
            continue
        if node.op != "get_attr" and node.is_impure():
            continue
        model.graph.erase_node(node)
        erased += 1
    if erased and recompile:
        model.graph.lint()
        model.recompile()
    return erased


def capture_pre_autograd_graph(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], **export_kwargs: Any
) -> GraphModule:
    """Export ``model`` the way ``prepare_pt2e`` expects: ``torch.export.export(...).module()``.

    >>> import torch
    >>> gm = capture_pre_autograd_graph(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    >>> [n.target for n in gm.graph.nodes if n.op == "call_function"]
    [<OpOverload(op='aten.linear', overload='default')>]
    """
    return torch.export.export(model, tuple(example_inputs), **export_kwargs).module()
