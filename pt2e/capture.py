"""Capturing a model the way the pipeline expects, and checking that it was.

The input to ``prepare_pt2e`` is ``torch.export.export(m, args).module()``: a
``GraphModule`` of ATen ops. On torch 2.13 it also carries a ``_guards_fn``
``call_module`` node that checks input shapes; we keep it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule

from .errors import NotExportedModelError

__all__ = [
    "check_exported",
    "capture_pre_autograd_graph",
]


def check_exported(model: Any, where: str) -> GraphModule:
    """Return ``model`` if it is an exported ``GraphModule``; otherwise explain how to get one.

    >>> import torch
    >>> check_exported(torch.nn.Linear(2, 2), "prepare_pt2e")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pt2e.errors.NotExportedModelError: prepare_pt2e expects the GraphModule returned by ...
    """
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
