"""Insert observers (PTQ) or fake quantizers (QAT) where the quantizer asked for them.

Before::

    x -> conv -> relu -> out          (conv, relu annotated)

After::

    x -> obs0 -> conv -> obs1 -> relu -> obs2 -> out

Each observer node calls its own submodule ``activation_post_process_<i>``,
numbered in insertion order as torchao numbers them (for each annotated node in
graph order: its observed inputs, then its output). Keys in one sharing group (see
:mod:`pt2e.sharing`) use the same instance, so a shared observer is one module
registered under several names; an edge whose observer is its producer's output
observer reuses that node instead of getting a second one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from observers import FakeQuantizeBase, ObserverBase

from .fold import mutated_attributes
from .graph import copy_meta, fresh_attr_name
from .numeric_debugger import control_flow_subgraphs  # the one list of HOP subgraphs
from .quantizer.annotation import get_annotation
from .quantizer.spec import EdgeOrNode

__all__ = ["insert_observers", "is_observer_module", "observer_nodes", "control_flow_bodies",
           "never_observed", "remove_observers", "OBSERVER_PREFIX"]

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


def _saw_data(obs: Any) -> bool:
    inner = getattr(obs, "activation_post_process", obs)  # fake quantizers wrap an observer
    mn = getattr(inner, "min_val", None)
    if not isinstance(mn, torch.Tensor):
        return True  # an observer that tracks no range
    return bool(mn.numel()) and not bool(torch.isinf(mn).all())


def never_observed(model: GraphModule) -> bool:
    """Whether ``model`` has observers and none of them has seen data: a control-flow
    branch that calibration never took."""
    modules = dict(model.named_modules(remove_duplicate=False))
    nodes = observer_nodes(model)
    return bool(nodes) and not any(_saw_data(modules[str(n.target)]) for n in nodes)


def remove_observers(model: GraphModule) -> int:
    """Take every observer call out of ``model`` (its users read the observed value again);
    return how many were removed.

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> from pt2e.quantizer import QuantizationAnnotation, QuantizationSpec
    >>> gm = torch.export.export(torch.nn.ReLU(), (torch.randn(2),)).module()
    >>> relu = next(n for n in gm.graph.nodes if n.op == "call_function")
    >>> spec = QuantizationSpec(dtype=torch.uint8, observer_or_fake_quant_ctr=MinMaxObserver)
    >>> relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=spec)
    >>> insert_observers(gm, {relu: MinMaxObserver()})
    1
    >>> remove_observers(gm), observer_nodes(gm), hasattr(gm, "activation_post_process_0")
    (1, [], False)
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    nodes = observer_nodes(model)
    for node in nodes:
        node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
        model.graph.erase_node(node)
        name = str(node.target)
        if "." not in name and isinstance(modules.get(name), torch.nn.Module):
            delattr(model, name)
    model.graph.lint()
    model.recompile()
    return len(nodes)


def control_flow_bodies(model: GraphModule) -> list[tuple[str, GraphModule]]:
    """``(attribute name, subgraph)`` for each ``torch.cond`` branch, ``while_loop`` body
    and ``scan`` combine function that ``model``'s own graph calls (not recursively):
    the bodies prepare and convert quantize like top-level code, as torchao does for
    ``while_loop`` and ``scan`` (and here for ``cond`` too). A body called twice is listed once.

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.cond(x.sum() > 0, lambda x: x.sin(), lambda x: x.cos(), (x,))
    >>> gm = torch.export.export(M(), (torch.randn(2),)).module()
    >>> [name for name, _ in control_flow_bodies(gm)]
    ['true_graph_0', 'false_graph_0']
    """
    hop = torch.ops.higher_order
    out: dict[str, GraphModule] = {}
    for name, sub, node in control_flow_subgraphs(model):
        if node.target is hop.map_impl:
            continue  # torchao quantizes no map body either
        cond_fn = node.args[0] if node.target is hop.while_loop else None
        if isinstance(cond_fn, Node) and str(cond_fn.target) == name:
            continue  # while_loop's cond_fn only computes the predicate
        out.setdefault(name, sub)
    return list(out.items())


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
        # (observed node, id(observer)[, reader]) -> observer node already in the graph
        self.inserted: dict[tuple[Any, ...], Node] = {}
        # buffers the graph writes (a KV cache): observed right before each reader,
        # after the writes, not where they are read from (get_attr) at the top
        self.mutated = mutated_attributes(model.graph)
        # observer node -> the original node whose value it observes
        self.origin: dict[Node, Node] = {}

    def observe(self, value: Node, obs: Any, before: Node | None = None) -> Node:
        """An observer node for ``value`` using ``obs``, reusing one if already there.

        It goes right after ``value``, or right before ``before`` when given.
        """
        key: tuple[Any, ...] = (value, id(obs)) if before is None else (value, id(obs), before)
        if key in self.inserted:
            return self.inserted[key]
        # one name per observed value (torchao's naming: user code looks observers up by it)
        name = fresh_attr_name(self.model, OBSERVER_PREFIX, numbered=True)
        self.model.add_module(name, obs)
        place = self.graph.inserting_after(value) if before is None else (
            self.graph.inserting_before(before))
        with place:
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
            state = arg.op == "get_attr" and str(arg.target) in self.mutated
            return self.observe(arg, obs, before=node if state else None)

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
