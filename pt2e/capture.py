"""Capturing a model the way the pipeline expects, and checking that it was.

The input to ``prepare_pt2e`` is ``torch.export.export(m, args).module()``: a
``GraphModule`` of ATen ops. On torch 2.13 it also carries a ``_guards_fn``
``call_module`` node that checks input shapes; we keep it, and
:func:`install_input_check` wraps it so that a call with an input of another
shape or dtype than the export example's says which input and dimension differ
and how to export with a dynamic dimension, instead of torch's bare
``AssertionError: Guard failed: x.size()[0] == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

from .errors import ArgumentTypeError, ArgumentValueError, NotExportedModelError

__all__ = [
    "check_exported",
    "capture_pre_autograd_graph",
    "ExpectedInput",
    "InputCheck",
    "expected_inputs",
    "check_input_values",
    "install_input_check",
    "GUARDS_MODULE",
]

GUARDS_MODULE = "_guards_fn"


@dataclass(frozen=True, kw_only=True)
class ExpectedInput:
    """One flat input of an exported graph: its name, dtype and sizes (``None``: dynamic)."""

    name: str
    position: int
    dtype: torch.dtype
    sizes: tuple[int | None, ...]


def expected_inputs(model: GraphModule) -> tuple[ExpectedInput, ...]:
    """The tensor inputs ``model`` was exported for, in placeholder order.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(4, 3),)).module()
    >>> expected_inputs(gm)
    (ExpectedInput(name='input', position=0, dtype=torch.float32, sizes=(4, 3)),)
    """
    found = []
    placeholders = [n for n in model.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        sizes = tuple(s if isinstance(s, int) else None for s in val.shape)
        found.append(ExpectedInput(name=str(node.target), position=i, dtype=val.dtype,
                                   sizes=sizes))
    return tuple(found)


def _dim_fix(expected: ExpectedInput, dim: int, n_inputs: int) -> str:
    name = "batch" if dim == 0 else f"size{dim}"
    spec = [f"{{{dim}: torch.export.Dim('{name}')}}" if i == expected.position else "None"
            for i in range(n_inputs)]
    shapes = "(" + ", ".join(spec) + ("," if n_inputs == 1 else "") + ")"
    return (
        f"export with that dimension dynamic: torch.export.export(model, example_args, "
        f"dynamic_shapes={shapes}).module() with an example whose size there is at least 2 "
        "(torch.export specialises a size-1 example), then prepare, calibrate and convert "
        "that model"
    )


def check_input_values(
    expected: tuple[ExpectedInput, ...], values: tuple[Any, ...], where: str
) -> None:
    """Raise a clear error if a flat input differs from the export example in dtype or a static size.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),)).module()
    >>> check_input_values(expected_inputs(gm), (torch.randn(5, 3),), "calibrate")
    ...     # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    pt2e.errors.ArgumentValueError: calibrate: input 'input' has size 5 in dim 0, but the model
    was exported with size 1 there ...dynamic_shapes=({0: torch.export.Dim('batch')},)...
    """
    n_inputs = len(values)
    lead = f"{where}: input" if where else "model input"
    for exp in expected:
        if exp.position >= n_inputs:
            continue
        value = values[exp.position]
        if not isinstance(value, torch.Tensor):
            continue
        if value.dtype != exp.dtype:
            raise ArgumentTypeError(
                f"{lead} '{exp.name}' is {value.dtype}, but the model was exported "
                f"with {exp.dtype}; convert it (e.g. `x.to({exp.dtype})`), or export with "
                f"an example input of dtype {value.dtype}"
            )
        if value.dim() != len(exp.sizes):
            raise ArgumentValueError(
                f"{lead} '{exp.name}' has {value.dim()} dimensions {tuple(value.shape)}, "
                f"but the model was exported with {len(exp.sizes)}: "
                f"{tuple('dynamic' if s is None else s for s in exp.sizes)}; pass inputs "
                "shaped like the export example"
            )
        for dim, (got, want) in enumerate(zip(value.shape, exp.sizes)):
            if want is not None and got != want:
                raise ArgumentValueError(
                    f"{lead} '{exp.name}' has size {got} in dim {dim}, but the model "
                    f"was exported with size {want} there (torch.export fixes every dimension "
                    f"to the example input's size unless told otherwise); "
                    + _dim_fix(exp, dim, n_inputs)
                )


class InputCheck(torch.nn.Module):
    """Stands in for the exported ``_guards_fn``: checks inputs clearly, then runs torch's guards.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),)).module()
    >>> install_input_check(gm)
    True
    >>> gm(torch.randn(2, 3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pt2e.errors.ArgumentValueError: model input 'input' has size 2 in dim 0, ...
    """

    # torch.fx keeps an impure call_module node even though nothing reads its result
    _is_impure = True

    def __init__(self, guards: torch.nn.Module, expected: tuple[ExpectedInput, ...]):
        super().__init__()
        self.guards = guards
        self.expected = expected

    def forward(self, *args: Any) -> Any:
        check_input_values(self.expected, args, "")
        return self.guards(*args)


def install_input_check(model: GraphModule) -> bool:
    """Wrap ``model``'s exported ``_guards_fn`` in an :class:`InputCheck`; whether it did.

    The guard module receives every flat input, so the check covers every call of the
    model (calibration, the converted model, and ``torch.compile`` of it).
    """
    guards = getattr(model, GUARDS_MODULE, None)
    if not isinstance(guards, torch.nn.Module) or isinstance(guards, InputCheck):
        return False
    setattr(model, GUARDS_MODULE, InputCheck(guards, expected_inputs(model)))
    return True


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
    # An exported graph may have no operator left (dead-code removal of an all-dead model):
    # its placeholders still carry export's example values, a symbolic_trace graph's do not.
    exported = all("val" in n.meta for n in model.graph.nodes if n.op == "placeholder")
    if not any(n.op == "call_function" for n in model.graph.nodes) and not exported:
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
