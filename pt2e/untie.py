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
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch.fx import GraphModule, Node

from .graph import attr_value, copy_meta, register_constant
from .ops import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS

__all__ = ["untie_shared_bias", "BIAS_OPS"]

#: Operators whose third argument is a bias (linear, conv, transposed conv).
BIAS_OPS: frozenset[Any] = LINEAR_OPS | CONV_OPS | CONV_TRANSPOSE_OPS


def _bias_uses(node: Node, ops: Collection[Any]) -> list[Node]:
    return [
        u for u in node.users
        if u.op == "call_function" and u.target in ops and len(u.args) > 2 and u.args[2] is node
    ]


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
        for i, user in enumerate(_bias_uses(node, ops)[1:], start=1):
            stem = f"{node.target}_use{i}".replace(".", "_")
            name = register_constant(gm, stem, value.detach().clone())
            with gm.graph.inserting_before(user):
                copy = gm.graph.get_attr(name)
            copy_meta(copy, node, value=True)
            user.replace_input_with(node, copy)
            made += 1
    if made:
        gm.graph.lint()
        gm.recompile()
    return made
