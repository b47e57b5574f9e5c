"""Give each linear/conv its own copy of a float bias constant it shares with another.

A module applied twice (``fc(fc(x))``) reads one bias constant from two layers.
Integer backends quantize a float bias per layer, to int32 with the scale
``input_scale * weight_scale`` of *that* layer; ExecuTorch's XNNPACK delegate
serialises one tensor per constant, so a shared bias is quantized once, with the
first layer's scale, and the second layer computes with a wrong bias (measured:
5.9 dB instead of 28 dB SQNR through ExecuTorch's stock
``to_edge_transform_and_lower``). ``convert_pt2e`` therefore unties shared
biases, so that the converted graph is safe for any downstream flow, not only
for :func:`lowering.to_executorch` (which runs the same rewrite again as a guard,
over the edge dialect's ``convolution`` too).

Before::

    bias = get_attr[fc.bias]
    l1 = linear(x_dq, w_dq, bias); l2 = linear(y_dq, w_dq, bias)

After::

    l1 = linear(x_dq, w_dq, bias); l2 = linear(y_dq, w_dq, bias_use1)

Numerics are unchanged (the copy holds the same values).

:func:`untie_shared_conv1d_weight` does the same for the weight of a ``conv1d``
applied twice: ExecuTorch's XNNPACK ``Conv1dUnsqueezePass`` turns each conv1d
into a conv2d by unsqueezing its weight constant in place, so the second use
of a shared weight finds it already 4-D and the stock
``to_edge_transform_and_lower`` fails ("Expected 4-dimensional input for
4-dimensional weight"; found by the fuzzer, tests/fuzz).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch.fx import GraphModule, Node

from .graph import attr_value, copy_meta, register_constant
from .ops import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS, is_dequantize

__all__ = ["untie_shared_bias", "untie_shared_conv1d_weight", "BIAS_OPS", "CONV1D_OPS"]

#: Operators whose third argument is a bias (linear, conv, transposed conv).
BIAS_OPS: frozenset[Any] = LINEAR_OPS | CONV_OPS | CONV_TRANSPOSE_OPS
#: One-dimensional convolutions, whose weight :func:`untie_shared_conv1d_weight` unties.
CONV1D_OPS: frozenset[Any] = frozenset({torch.ops.aten.conv1d.default, torch.ops.aten.conv1d.padding})


def _uses(node: Node, ops: Collection[Any], position: int) -> list[Node]:
    return [
        u for u in node.users
        if u.op == "call_function" and u.target in ops and len(u.args) > position
        and u.args[position] is node
    ]


def _copy_constant(gm: GraphModule, node: Node, stem: str, before: Node) -> Node:
    value = attr_value(gm, str(node.target))
    name = register_constant(gm, stem, value.detach().clone())
    with gm.graph.inserting_before(before):
        copy = gm.graph.get_attr(name)
    copy_meta(copy, node, value=True)
    return copy


def _done(gm: GraphModule, made: int) -> int:
    if made:
        gm.graph.lint()
        gm.recompile()
    return made


def untie_shared_bias(gm: GraphModule, ops: Collection[Any] = BIAS_OPS) -> int:
    """Give every ``ops`` node after the first that reads a shared float ``get_attr``
    bias its own copy; return the number of copies made (the graph is recompiled
    when it is not 0).

    >>> import torch
    >>> class Twice(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.fc(self.fc(x))
    >>> x = torch.randn(3, 2)
    >>> gm = torch.export.export(Twice(), (x,)).module()
    >>> before = gm(x)
    >>> untie_shared_bias(gm)
    1
    >>> sorted(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
    ['fc.bias', 'fc.weight', 'fc_bias_use1']
    >>> torch.equal(gm(x), before), untie_shared_bias(gm)
    (True, 0)
    """
    made = 0
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        value = attr_value(gm, str(node.target))
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        for i, user in enumerate(_uses(node, ops, 2)[1:], start=1):
            user.replace_input_with(node, _copy_constant(gm, node, f"{node.target}_use{i}".replace(".", "_"), user))
            made += 1
    return _done(gm, made)


def untie_shared_conv1d_weight(gm: GraphModule, ops: Collection[Any] = CONV1D_OPS) -> int:
    """Give every ``conv1d`` after the first that reads a shared weight its own copy: of
    the ``get_attr`` constant, or of the constant and its ``dequantize`` node for a
    quantized weight. Return the number of copies made (the graph is recompiled when it
    is not 0).

    >>> import torch
    >>> class Twice(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = torch.nn.Conv1d(2, 2, 1)
    ...     def forward(self, x):
    ...         return self.conv(torch.relu(self.conv(x)))
    >>> x = torch.randn(1, 2, 3)
    >>> gm = torch.export.export(Twice(), (x,)).module()
    >>> before = gm(x)
    >>> untie_shared_conv1d_weight(gm)
    1
    >>> sorted(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
    ['conv.bias', 'conv.weight', 'conv_weight_use1']
    >>> torch.equal(gm(x), before), untie_shared_conv1d_weight(gm)
    (True, 0)
    """
    made, order = 0, {n: i for i, n in enumerate(gm.graph.nodes)}
    for constant in list(gm.graph.nodes):
        if constant.op != "get_attr" or not isinstance(attr_value(gm, str(constant.target)), torch.Tensor):
            continue
        # (conv1d, the dequantize between it and the constant or None), in graph order
        uses = [(u, None) for u in _uses(constant, ops, 1)] + [
            (u, dq) for dq in constant.users if is_dequantize(dq) and dq.args[0] is constant
            for u in _uses(dq, ops, 1)]
        uses.sort(key=lambda use: order[use[0]])
        for i, (user, dq) in enumerate(uses[1:], start=1):
            copy = _copy_constant(gm, constant, f"{constant.target}_use{i}".replace(".", "_"), user)
            if dq is not None:
                with gm.graph.inserting_before(user):
                    copy = gm.graph.call_function(dq.target, (copy, *dq.args[1:]), dict(dq.kwargs))
                copy_meta(copy, dq, value=True)
            user.replace_input_with(dq if dq is not None else constant, copy)
            made += 1
    return _done(gm, made)
