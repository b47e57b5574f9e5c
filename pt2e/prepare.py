"""Insert observers (PTQ) or fake quantizers (QAT) where the quantizer asked for them.

Before::

    x -> conv -> relu -> out          (conv, relu annotated)

After::

    x -> obs0 -> conv -> obs1 -> relu -> obs2 -> out

Each observer is a submodule ``activation_post_process_<i>`` called by a
``call_module`` node. Keys in one sharing group (see :mod:`pt2e.sharing`) use the
same instance, and an edge whose observer is its producer's output observer reuses
that node instead of getting a second one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from observers import FakeQuantizeBase, ObserverBase

from .graph import copy_meta, fresh_attr_name
from .quantizer.annotation import get_annotation
from .quantizer.spec import EdgeOrNode

__all__ = ["insert_observers", "is_observer_module", "observer_nodes", "OBSERVER_PREFIX"]

OBSERVER_PREFIX = "activation_post_process_"


def is_observer_module(module: Any) -> bool:
    """Whether ``module`` is an observer or fake quantizer (ours or torchao's, by duck type)."""
    if isinstance(module, (ObserverBase, FakeQuantizeBase)):
        return True
    return (
        isinstance(module, torch.nn.Module)
        and hasattr(module, "dtype")
        and callable(getattr(module, "calculate_qparams", None))
    )


def observer_nodes(model: GraphModule) -> list[Node]:
    """The ``call_module`` nodes that call an observer or fake quantizer, in graph order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return [
        n for n in model.graph.nodes
        if n.op == "call_module" and is_observer_module(modules.get(str(n.target)))
    ]


def _writes_first_arg(node: Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return bool(alias is not None and alias.is_write)


class _Inserter:
    def __init__(self, model: GraphModule, obs_map: dict[EdgeOrNode, Any]):
        self.model = model
        self.graph = model.graph
        self.obs_map = obs_map
        # (observed node, id(observer)) -> observer node already in the graph
        self.inserted: dict[tuple[Node, int], Node] = {}
        # observer node -> the original node whose value it observes
        self.origin: dict[Node, Node] = {}
        # one submodule per observer instance, however many nodes call it
        self.module_name: dict[int, str] = {}

    def observe(self, value: Node, obs: Any) -> Node:
        """An observer node for ``value`` using ``obs``, reusing one if already there."""
        key = (value, id(obs))
        if key in self.inserted:
            return self.inserted[key]
        name = self.module_name.get(id(obs))
        if name is None:
            name = self.module_name[id(obs)] = fresh_attr_name(self.model, OBSERVER_PREFIX, numbered=True)
            self.model.add_module(name, obs)
        with self.graph.inserting_after(value):
            node = self.graph.call_module(name, (value,))
        original = self.origin.get(value, value)
        copy_meta(node, original, value=True)
        self.inserted[key] = node
        self.origin[node] = original
        return node

    def visit(self, node: Node) -> None:
        if get_annotation(node) is None:
            return
        mutated = node.args[0] if _writes_first_arg(node) and node.args else None

        def rewire(arg: Node) -> Node:
            original = self.origin.get(arg, arg)
            obs = self.obs_map.get((original, node))
            if obs is None or original is mutated:
                # in-place updates of a buffer must write into the buffer itself
                return arg
            if self.obs_map.get(original) is obs:
                return arg  # already reads the producer's output observer
            return self.observe(arg, obs)

        node.args = map_arg(node.args, rewire)
        node.kwargs = map_arg(node.kwargs, rewire)

        obs = self.obs_map.get(node)
        if obs is None or not isinstance(node.meta.get("val"), torch.Tensor):
            return
        obs_node = self.observe(node, obs)
        for user in list(node.users):
            if user is not obs_node:
                user.replace_input_with(node, obs_node)


def insert_observers(model: GraphModule, obs_map: dict[EdgeOrNode, Any]) -> int:
    """Insert ``obs_map``'s observers into ``model`` in place; return how many nodes were added."""
    inserter = _Inserter(model, obs_map)
    for node in list(model.graph.nodes):
        inserter.visit(node)
    model.graph.lint()
    model.recompile()
    return len(inserter.inserted)
