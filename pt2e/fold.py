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
from .ops import AFFINE_QUANTIZE_OPS, QUANTIZE_OPS

__all__ = [
    "fold_constant_quantize",
    "constant_value",
    "drop_unused_attributes",
    "mutated_attributes",
    "FROZEN_PREFIX",
]

FROZEN_PREFIX = "_frozen_param"


def _aliases_first_arg(node: Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or not schema.arguments:
        return False
    return schema.arguments[0].alias_info is not None


def mutated_attributes(graph: torch.fx.Graph) -> set[str]:
    """The ``get_attr`` targets some node writes in place, directly or through a view.

    Such a buffer (a KV cache, say) is state, not a constant: its value at a node is
    what the graph wrote into it before, so it must be neither folded nor observed
    before the write.

    >>> import torch
    >>> class Cache(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("cache", torch.zeros(4, 2))
    ...     def forward(self, x):
    ...         self.cache[:2].copy_(x)
    ...         return self.cache + 1
    >>> gm = torch.export.export(Cache(), (torch.randn(2, 2),)).module()
    >>> mutated_attributes(gm.graph)
    {'cache'}
    """
    written: set[str] = set()
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            alias = arg.alias_info
            if alias is None or not alias.is_write or i >= len(node.args):
                continue
            target = node.args[i]
            # walk back through views (slice, select, view...) to the buffer they alias
            while isinstance(target, Node) and _aliases_first_arg(target) and target.args:
                target = target.args[0]
            if isinstance(target, Node) and target.op == "get_attr":
                written.add(str(target.target))
    return written


def _is_constant(node: Node, memo: dict[Node, bool], mutated: set[str]) -> bool:
    if node in memo:
        return memo[node]
    if node.op == "get_attr":
        result = str(node.target) not in mutated
    elif node.op == "call_function" and not node.is_impure():
        result = all(_is_constant(n, memo, mutated) for n in node.all_input_nodes)
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
    if not _is_constant(node, {}, mutated_attributes(node.graph)):
        return None
    with torch.no_grad():
        return _evaluate(model, node, {})


def drop_unused_attributes(model: GraphModule) -> int:
    """Delete parameters and buffers no ``get_attr`` reads any more; return how many.

    Keeps a converted model's state dict to what it runs: after weight folding the
    float weights, and the weights of dead code such as an unused pooler, go.
    """
    # control-flow bodies (cond/while_loop/scan subgraphs) read their own attributes
    used = {f"{path}.{n.target}" if path else str(n.target)
            for path, gm in model.named_modules(remove_duplicate=False)
            if isinstance(gm, GraphModule) for n in gm.graph.nodes if n.op == "get_attr"}
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
    mutated = mutated_attributes(graph)
    cache: dict[Node, Any] = {}
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in QUANTIZE_OPS | AFFINE_QUANTIZE_OPS:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or not _is_constant(src, memo, mutated):
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
