"""Fold quantization of constants (weights) into integer constants.

Before (``fold_quantize=False``)::

    get_attr(conv.weight) -> quantize_per_channel -> dequantize_per_channel -> conv

After (``fold_quantize=True``)::

    get_attr(_frozen_param0: int8) -> dequantize_per_channel -> conv

The integer weight is registered as a buffer, and float parameters that nothing
uses any more are removed, so the saved model holds int8 weights only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from .graph import attr_value, copy_meta, register_constant, remove_dead_code
from .ops import QUANTIZE_OPS

__all__ = ["fold_constant_quantize", "constant_value", "drop_unused_attributes", "FROZEN_PREFIX"]

FROZEN_PREFIX = "_frozen_param"


def _is_constant(node: Node, memo: dict[Node, bool]) -> bool:
    if node in memo:
        return memo[node]
    if node.op == "get_attr":
        result = True
    elif node.op == "call_function" and not node.is_impure():
        result = all(_is_constant(n, memo) for n in node.all_input_nodes)
    else:
        result = False
    memo[node] = result
    return result


def _evaluate(model: GraphModule, node: Node, cache: dict[Node, Any]) -> Any:
    if node not in cache:
        if node.op == "get_attr":
            cache[node] = attr_value(model, str(node.target))
        else:
            args = map_arg(node.args, lambda n: _evaluate(model, n, cache))
            kwargs = map_arg(node.kwargs, lambda n: _evaluate(model, n, cache))
            cache[node] = node.target(*args, **kwargs)  # type: ignore[operator]
    return cache[node]


def constant_value(model: GraphModule, node: Node) -> Any | None:
    """The value of ``node`` if it depends on constants (get_attr) only, else ``None``."""
    if not _is_constant(node, {}):
        return None
    with torch.no_grad():
        return _evaluate(model, node, {})


def drop_unused_attributes(model: GraphModule) -> int:
    """Delete parameters and buffers no ``get_attr`` reads any more; return how many.

    Keeps a converted model's state dict to what it runs: after weight folding the
    float weights, and the weights of dead code such as an unused pooler, go.
    """
    used = {str(n.target) for n in model.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    dropped = 0
    for target in set(names) - used:
        owner_path, _, name = target.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        if name in owner._parameters or name in owner._buffers:
            delattr(owner, name)
            dropped += 1
    return dropped


def fold_constant_quantize(model: GraphModule) -> int:
    """Evaluate every quantize op whose input is a constant; return how many were folded."""
    graph = model.graph
    memo: dict[Node, bool] = {}
    cache: dict[Node, Any] = {}
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in QUANTIZE_OPS:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or not _is_constant(src, memo):
            continue
        with torch.no_grad():
            value = _evaluate(model, node, cache).detach().clone()
        name = register_constant(model, FROZEN_PREFIX, value, numbered=True)
        with graph.inserting_before(node):
            const = graph.get_attr(name)
        copy_meta(const, node)
        node.replace_all_uses_with(const)
        graph.erase_node(node)
        folded += 1
    if folded:
        remove_dead_code(model, recompile=False)
    return folded
