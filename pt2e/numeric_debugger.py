"""The numeric debugger: log every node's output in two models and compare them by provenance.

Same names, arguments and defaults as ``torchao.quantization.pt2e``'s debugger:

1. (optional) :func:`generate_numeric_debug_handle` stamps every node of an
   ``ExportedProgram`` (control-flow branches included) with a unique integer in
   ``node.meta["custom"]["numeric_debug_handle"]``;
2. keep a float copy (``copy.deepcopy``) of the exported module, quantize the other;
3. :func:`prepare_for_propagation_comparison` puts an :class:`OutputLogger` after
   every node that has a debug key, in a copy of each model; run the same inputs
   through both;
4. :func:`extract_results_from_loggers` collects the logged values by key and
   :func:`compare_results` pairs them into SQNR/MSE summaries.

A node's *debug key* is its numeric debug handle when it has one, otherwise the
:class:`NodeSourceDebugInfo` of its oldest ``from_node`` ancestor (what torchao
0.18 uses). Every node prepare, convert, folding, QAT and the reference
representation insert carries the metadata of the node it stands for
(:func:`pt2e.graph.copy_meta`), so a dequantize has the key of the value it
quantizes and the last logged node with a key holds that value as the quantized
model computes it. Nodes inside ``torch.cond`` branches have no ``from_node``:
stamp handles with :func:`generate_numeric_debug_handle` to compare them
(torchao skips models with control flow).

>>> import copy, torch
>>> ep = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()),
...                          (torch.randn(2, 4),))
>>> generate_numeric_debug_handle(ep)
>>> ref = prepare_for_propagation_comparison(ep.module())
>>> out = ref(torch.randn(2, 4))
>>> results = extract_results_from_loggers(ref)
>>> sorted(results), results[1][0]
([1, 2], 'linear')
>>> summary = compare_results(results, results)[2]
>>> summary.ref_node_name, summary.results[0].sqnr
('relu', tensor(inf))
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from .errors import ArgumentTypeError, ArgumentValueError
from .graph import CUSTOM_KEY, FROM_NODE_KEY, fresh_attr_name
from .graph import DEBUG_HANDLE_KEY as NUMERIC_DEBUG_HANDLE_KEY

__all__ = [
    "CUSTOM_KEY",
    "NUMERIC_DEBUG_HANDLE_KEY",
    "FROM_NODE_KEY",
    "NodeSourceDebugInfo",
    "DebugKey",
    "OutputLogger",
    "QuantizationComparisonResult",
    "NodeAccuracySummary",
    "bfs_trace_with_node_process",
    "control_flow_subgraphs",
    "debug_key",
    "generate_numeric_debug_handle",
    "prepare_for_propagation_comparison",
    "extract_results_from_loggers",
    "compare_results",
    "sqnr",
]

log = logging.getLogger(__name__)

# the unlifted module's get_attr nodes: not part of the exported graph, never logged
_UNLIFT_PASS = "ExportedProgram.module().unlift()"


@dataclass(frozen=True)
class NodeSourceDebugInfo:
    """Where a node comes from in the exported graph: its oldest ``from_node`` ancestor.

    ``name`` is that ancestor's node name, ``graph_id`` the id of its graph.
    """

    name: str
    graph_id: int


#: What the loggers are keyed by: a numeric debug handle or a node source.
DebugKey = int | NodeSourceDebugInfo


def _submodule(gm: GraphModule, arg: Any) -> GraphModule | None:
    if isinstance(arg, Node) and arg.op == "get_attr":
        sub = getattr(gm, str(arg.target), None)
        return sub if isinstance(sub, GraphModule) else None
    return None


def control_flow_subgraphs(gm: GraphModule) -> list[tuple[str, GraphModule, Node]]:
    """``(attribute name, subgraph, node using it)`` for each ``cond``/``map``/``scan``/
    ``while_loop`` branch called from ``gm``'s own graph (not recursively).

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.cond(x.sum() > 0, lambda x: x.sin(), lambda x: x.cos(), (x,))
    >>> gm = torch.export.export(M(), (torch.randn(2),)).module()
    >>> [name for name, _, _ in control_flow_subgraphs(gm)]
    ['true_graph_0', 'false_graph_0']
    """
    hop = torch.ops.higher_order
    positions = {hop.cond: (1, 2), hop.map_impl: (0,), hop.while_loop: (0, 1)}
    if hasattr(hop, "scan"):
        positions[hop.scan] = (0,)
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in positions:
            continue
        for i in positions[node.target]:
            arg = node.args[i] if i < len(node.args) else None
            sub = _submodule(gm, arg)
            if sub is not None:
                out.append((str(arg.target), sub, node))  # type: ignore[union-attr]
    return out


def _graph_modules(model: ExportedProgram | GraphModule, where: str) -> Iterator[GraphModule]:
    if isinstance(model, ExportedProgram):
        model = model.graph_module
    if not isinstance(model, GraphModule):
        raise ArgumentTypeError(
            f"{where} expects an ExportedProgram or a torch.fx.GraphModule, got "
            f"{type(model).__name__}; pass torch.export.export(model, args) or its .module()"
        )
    queue = [model]
    while queue:
        gm = queue.pop(0)
        yield gm
        queue.extend(sub for _, sub, _ in control_flow_subgraphs(gm))


def bfs_trace_with_node_process(
    model: ExportedProgram | GraphModule, node_op: Callable[[Node], Any]
) -> None:
    """Call ``node_op`` on every node but placeholders and outputs, the top graph first,
    then the control-flow branches breadth first.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> names = []
    >>> bfs_trace_with_node_process(gm, lambda n: names.append(n.name))
    >>> names
    ['weight', 'bias', '_guards_fn', 'linear']
    """
    for gm in _graph_modules(model, "bfs_trace_with_node_process"):
        for node in gm.graph.nodes:
            if node.op not in ("placeholder", "output"):
                node_op(node)


def _handle(node: Node) -> int | None:
    custom = node.meta.get(CUSTOM_KEY)
    return custom.get(NUMERIC_DEBUG_HANDLE_KEY) if isinstance(custom, dict) else None


def generate_numeric_debug_handle(ep: ExportedProgram | GraphModule) -> None:
    """Give every operator node (``call_function``/``call_method``) that has no numeric
    debug handle a fresh one, larger than any handle already in the graph; in place.

    Running it again after a pass added nodes numbers only the new nodes, so their
    handles are fresh and unique. torchao accepts only an ``ExportedProgram`` and also
    numbers ``get_attr`` nodes; here a ``GraphModule`` is accepted too, and weights,
    branch modules and guards get no handle (they have no output to compare).

    >>> import torch
    >>> ep = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    >>> generate_numeric_debug_handle(ep)
    >>> [(n.name, n.meta["custom"]["numeric_debug_handle"]) for n in ep.graph.nodes
    ...  if n.op == "call_function"]
    [('linear', 1)]
    """
    if not isinstance(ep, (ExportedProgram, GraphModule)):
        raise ArgumentTypeError(
            f"generate_numeric_debug_handle expects an ExportedProgram, got {type(ep).__name__}; "
            "pass torch.export.export(model, args) (or its .module())"
        )
    largest = 0

    def find_max(node: Node) -> None:
        nonlocal largest
        h = _handle(node)
        if h is not None:
            largest = max(largest, h)

    bfs_trace_with_node_process(ep, find_max)
    next_handle = largest + 1

    def assign(node: Node) -> None:
        nonlocal next_handle
        if node.op not in ("call_function", "call_method"):
            return  # weights, branch modules, guards: no value of their own to compare
        custom = node.meta.get(CUSTOM_KEY)
        if not isinstance(custom, dict):
            custom = node.meta[CUSTOM_KEY] = {}
        if NUMERIC_DEBUG_HANDLE_KEY not in custom:
            custom[NUMERIC_DEBUG_HANDLE_KEY] = next_handle
            next_handle += 1

    bfs_trace_with_node_process(ep, assign)


def debug_key(node: Node) -> DebugKey | None:
    """The key a node's output is logged under, or ``None`` if it is not logged.

    The numeric debug handle if the node has one, else its oldest ``from_node``
    ancestor (torchao's rule). Placeholders, outputs, ``get_attr`` and
    ``call_module`` nodes (guards, observers, loggers) are never logged.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> [debug_key(n).name for n in gm.graph.nodes if debug_key(n) is not None]
    ['linear']
    """
    if node.op not in ("call_function", "call_method"):
        return None
    h = _handle(node)
    if h is not None:
        return int(h)
    sources = node.meta.get(FROM_NODE_KEY)
    if not sources or sources[-1].pass_name == _UNLIFT_PASS:
        return None
    src = sources[-1]
    while src.from_node:
        src = src.from_node[-1]
    return NodeSourceDebugInfo(name=src.name, graph_id=src.graph_id)


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(e) for e in x)
    if isinstance(x, dict):
        return {k: _detach(e) for k, e in x.items()}
    return x


class OutputLogger(torch.nn.Module):
    """Records (detached) every value that passes through it in :attr:`stats`.

    >>> logger = OutputLogger(3, "linear")
    >>> _ = logger(torch.ones(2)); _ = logger(torch.zeros(2))
    >>> len(logger.stats), logger.debug_info, logger.node_name
    (2, 3, 'linear')
    """

    # calls to it must survive dead-code elimination
    _is_impure = True

    def __init__(
        self,
        debug_info: DebugKey,
        node_name: str | None = None,
        nn_module_stack: object | None = None,
    ) -> None:
        super().__init__()
        self.node_name = node_name
        self.nn_module_stack = nn_module_stack
        self.debug_info = debug_info
        self.stats: list[object] = []

    def forward(self, x: object) -> object:
        self.stats.append(_detach(x))
        return x

    def extra_repr(self) -> str:
        return (f"debug_info={self.debug_info}, node_name={self.node_name}, "
                f"num_stats={len(self.stats)}")


def _insert_logger(gm: GraphModule, node: Node, key: DebugKey) -> None:
    name = fresh_attr_name(gm, f"{node.name}_logger", numbered=True)
    gm.add_module(name, OutputLogger(key, node.name, node.meta.get("nn_module_stack")))
    with gm.graph.inserting_after(node):
        logger_node = gm.graph.call_module(name, (node,), {})
    node.replace_all_uses_with(logger_node, delete_user_cb=lambda user: user is not logger_node)


def prepare_for_propagation_comparison(model: GraphModule) -> GraphModule:
    """A copy of ``model`` with an :class:`OutputLogger` after every node with a debug key,
    control-flow branches included; ``model`` itself is not changed.

    Run it under ``torch.no_grad()`` when the model has ``torch.cond``: with gradients
    on, ``cond`` traces its branches instead of running them.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> logged = prepare_for_propagation_comparison(gm)
    >>> [type(m).__name__ for _, m in logged.named_children() if isinstance(m, OutputLogger)]
    ['OutputLogger']
    """
    if not isinstance(model, GraphModule):
        raise ArgumentTypeError(
            f"prepare_for_propagation_comparison expects a torch.fx.GraphModule, got "
            f"{type(model).__name__}; pass torch.export.export(model, args).module() (or the "
            "prepared/converted model)"
        )
    model = copy.deepcopy(model)
    for gm in list(_graph_modules(model, "prepare_for_propagation_comparison")):
        for node in list(gm.graph.nodes):
            key = debug_key(node)
            if key is not None:
                _insert_logger(gm, node, key)
        gm.recompile()
    return model


def _loggers(model: GraphModule) -> Iterator[OutputLogger]:
    """The loggers in graph order (top graph, then branches), so the last one for a key
    is the last node computing that value."""
    for gm in _graph_modules(model, "extract_results_from_loggers"):
        for node in gm.graph.nodes:
            if node.op == "call_module":
                mod = gm.get_submodule(str(node.target))
                if isinstance(mod, OutputLogger):
                    yield mod


def extract_results_from_loggers(
    model: GraphModule,
) -> dict[DebugKey, tuple[str | None, object, list[object]]]:
    """``{debug key: (node name, nn_module_stack, values logged per call)}``.

    Where several nodes share a key (a layer and the quantize/dequantize standing for
    its output) the last one in graph order wins: the value as the model uses it.
    Example: see the module docstring.
    """
    results: dict[DebugKey, tuple[str | None, object, list[object]]] = {}
    for logger in _loggers(model):
        if logger.stats:
            results[logger.debug_info] = (logger.node_name, logger.nn_module_stack, logger.stats)
    return results


def sqnr(ref: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Signal-to-quantization-noise ratio in dB: ``20 log10(|ref| / |ref - actual|)``.

    >>> float(sqnr(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])))  # 20 log10(5 / 0.5)
    20.0
    """
    ref, actual = ref.detach().double(), actual.detach().double()
    noise = torch.linalg.vector_norm(ref - actual)
    signal = torch.linalg.vector_norm(ref)
    if noise == 0:
        return torch.tensor(math.inf)
    return (20 * torch.log10(signal / noise)).float()


def _loss_fn(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: Any, y: Any) -> Any:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return loss(x.to(torch.float32), y.to(torch.float32))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x)(_loss_fn(loss, a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return {k: _loss_fn(loss, v, y[k]) for k, v in x.items()}
    return None


def _same_shapes(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same_shapes(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same_shapes(x[k], y[k]) for k in x)
    return bool(type(x) is type(y) and x == y)


@dataclass(frozen=True)
class QuantizationComparisonResult:
    """One logged value of the actual model against the reference's.

    >>> r = QuantizationComparisonResult(actual=torch.tensor([3.0, 4.5]),
    ...                                  ref=torch.tensor([3.0, 4.0]))
    >>> float(r.sqnr), float(r.mse_loss)
    (20.0, 0.125)
    """

    actual: Any
    ref: Any

    @property
    def mse_loss(self) -> Any:
        return self.loss(torch.nn.functional.mse_loss)

    @property
    def sqnr(self) -> Any:
        return self.loss(lambda a, r: sqnr(r, a))

    def loss(self, loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Any:
        """``loss_function(actual, ref)`` on each tensor, in the values' structure."""
        return _loss_fn(loss_function, self.actual, self.ref)

    def __repr__(self) -> str:
        return f"QuantizationComparisonResult(mse_loss={self.mse_loss}, sqnr={self.sqnr})"

    def __post_init__(self) -> None:
        for name in ("actual", "ref"):
            if not isinstance(getattr(self, name), (torch.Tensor, list, tuple, dict)):
                raise ArgumentTypeError(
                    f"QuantizationComparisonResult.{name} must be a Tensor, list, tuple or dict, "
                    f"got {type(getattr(self, name)).__name__}"
                )
        if not _same_shapes(self.ref, self.actual):
            raise ArgumentValueError(
                "QuantizationComparisonResult: the reference and actual values have different "
                "shapes; compare values logged for the same node with the same inputs"
            )


@dataclass(frozen=True)
class NodeAccuracySummary:
    """The comparisons of one debug key: node names and module paths in both models."""

    debug_info: DebugKey
    actual_node_name: str
    actual_module_stack: str
    ref_node_name: str
    ref_module_stack: str
    results: Sequence[QuantizationComparisonResult]


def _module_stack_to_str(stack: object) -> str:
    if isinstance(stack, dict) and stack:
        return str(list(stack.values())[-1][0])
    return str(stack)


def compare_results(
    ref_results: dict[DebugKey, tuple[str | None, object, list[Any]]],
    actual_results: dict[DebugKey, tuple[str | None, object, list[Any]]],
) -> dict[DebugKey, NodeAccuracySummary]:
    """Pair the values logged under the same key in both models, in ``ref_results``' order.

    Keys only one model has are skipped (logged at debug level). Example: see the
    module docstring.
    """
    out: dict[DebugKey, NodeAccuracySummary] = {}
    for key, (ref_name, ref_stack, ref_stats) in ref_results.items():
        if key not in actual_results:
            log.debug("no value for debug key %s (node %s) in the actual model", key, ref_name)
            continue
        actual_name, actual_stack, actual_stats = actual_results[key]
        try:
            results = [QuantizationComparisonResult(actual=a, ref=r)
                       for a, r in zip(actual_stats, ref_stats)]
        except ArgumentValueError as e:
            raise ArgumentValueError(
                f"compare_results: debug key {key} is node '{ref_name}' in the reference and "
                f"'{actual_name}' in the actual model, and their values differ in shape; were "
                "both models run on the same inputs?"
            ) from e
        out[key] = NodeAccuracySummary(
            debug_info=key,
            actual_node_name=actual_name or "",
            actual_module_stack=_module_stack_to_str(actual_stack),
            ref_node_name=ref_name or "",
            ref_module_stack=_module_stack_to_str(ref_stack),
            results=results,
        )
    return out
