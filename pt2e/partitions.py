"""Find chains of source partitions, and the producers of a node: torchao's graph utilities.

The names, arguments and defaults are those of ``torchao.quantization.pt2e.graph_utils``,
so quantizer code written against it switches by changing the import.

A *source partition* is the set of ATen nodes that one call in the model's source
(``nn.Conv2d``, ``F.relu``, ``+``) was exported to (torch.fx's
``get_source_partitions``). :func:`find_sequential_partitions` finds every chain of
partitions of the given types where each one feeds the next, e.g. ``[Conv2d, ReLU]``.
A module and its functional form count as one type (``nn.ReLU`` and ``F.relu``): the
*equivalent types*, editable with :func:`update_equivalent_types_dict`.

The breadth-first walk over a graph and its control-flow branches,
:func:`~pt2e.numeric_debugger.bfs_trace_with_node_process`, lives with the numeric
debugger that uses it, and is re-exported here.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.utils.source_matcher_utils import (
    SourcePartition,
    check_subgraphs_connected,
    get_source_partitions,
)

from .errors import ArgumentValueError
from .numeric_debugger import bfs_trace_with_node_process

__all__ = [
    "find_sequential_partitions",
    "get_equivalent_types",
    "update_equivalent_types_dict",
    "bfs_trace_with_node_process",
    "collect_producer_nodes",
]

F = torch.nn.functional

# The same groups as torchao's: a module, its functional form(s) and in-place spellings
_DEFAULT_EQUIVALENT_TYPES: list[set[Any]] = [
    {torch.nn.Conv1d, F.conv1d},
    {torch.nn.Conv2d, F.conv2d},
    {torch.nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d},
    {torch.nn.ReLU, F.relu, F.relu_},
    {torch.nn.BatchNorm2d, F.batch_norm},
    {torch.nn.Hardtanh, F.hardtanh, F.hardtanh_},
    {torch.add, operator.add, operator.iadd, "add", "add_"},
    {torch.mul, operator.mul, operator.imul, "mul", "mul_"},
]


class _Equivalence:
    """The current equivalence groups and, for each type, the types it stands for."""

    def __init__(self, groups: list[set[Any]]):
        self.groups = groups
        self.of: dict[Any, list[Any]] = {t: list(group) for group in groups for t in group}


_equivalence = _Equivalence(_DEFAULT_EQUIVALENT_TYPES)


def get_equivalent_types() -> list[set[Any]]:
    """The groups of source types that :func:`find_sequential_partitions` treats as one.

    >>> import torch
    >>> {torch.nn.ReLU, torch.nn.functional.relu} <= next(
    ...     g for g in get_equivalent_types() if torch.nn.ReLU in g)
    True
    """
    return _equivalence.groups


def update_equivalent_types_dict(customized_equivalent_types: list[set[Any]] | None = None) -> None:
    """Replace the equivalence groups (process-wide, as in torchao).

    >>> import torch
    >>> saved = get_equivalent_types()
    >>> update_equivalent_types_dict([{torch.nn.ReLU, torch.nn.functional.relu}])
    >>> len(get_equivalent_types())
    1
    >>> update_equivalent_types_dict(saved)
    >>> update_equivalent_types_dict(None)
    Traceback (most recent call last):
    ...
    pt2e.errors.ArgumentValueError: update_equivalent_types_dict(customized_equivalent_types=None): pass a list of sets of equivalent source types, e.g. [{torch.nn.ReLU, torch.nn.functional.relu}] (get_equivalent_types() returns the current list)
    """
    global _equivalence
    if customized_equivalent_types is None:
        raise ArgumentValueError(
            "update_equivalent_types_dict(customized_equivalent_types=None): pass a list of "
            "sets of equivalent source types, e.g. [{torch.nn.ReLU, torch.nn.functional.relu}] "
            "(get_equivalent_types() returns the current list)"
        )
    _equivalence = _Equivalence(list(customized_equivalent_types))


def _matching_types(partition_type: Any, include_equivalent: bool) -> list[Any]:
    if not include_equivalent:
        return [partition_type]
    return [partition_type, *_equivalence.of.get(partition_type, [])]


def _chained(partitions: Sequence[SourcePartition]) -> bool:
    return all(check_subgraphs_connected(a, b) for a, b in itertools.pairwise(partitions))


def find_sequential_partitions(
    gm: GraphModule,
    partition_types: list[Any],
    include_functional_equivalent: bool = True,
    filter_fn: Callable[[Node], bool] | None = None,
) -> list[tuple[SourcePartition, ...]]:
    """Every chain of source partitions of ``partition_types``, in that order, where each
    partition's output feeds the next one.

    ``include_functional_equivalent=True`` also matches each type's equivalents
    (``nn.ReLU`` finds ``F.relu`` too); ``filter_fn`` keeps only partitions whose
    nodes it accepts (torch.fx's ``get_source_partitions`` rule). A type may appear
    once per sequence (with its equivalents). Partitions come from each node's
    ``source_fn_stack``, which ``torch.export.export(..., strict=True)`` records
    (a non-strict export has none, so nothing matches, in torchao too).

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1))
    >>> gm = torch.export.export(m, (torch.randn(1, 1, 3, 3),), strict=True).module()
    >>> chains = find_sequential_partitions(gm, [torch.nn.Conv2d, torch.nn.ReLU])
    >>> [[p.nodes[-1].name for p in chain] for chain in chains]
    [['conv2d', 'relu']]
    >>> find_sequential_partitions(gm, [torch.nn.ReLU, torch.nn.functional.relu])
    Traceback (most recent call last):
    ...
    pt2e.errors.ArgumentValueError: find_sequential_partitions: partition_types lists <function relu ...> twice (with its equivalent types); give each type once per sequence
    """
    seen: set[Any] = set()
    for t in partition_types:
        matching = set(_matching_types(t, include_functional_equivalent))
        if seen & matching:
            raise ArgumentValueError(
                f"find_sequential_partitions: partition_types lists {t!r} twice (with its "
                "equivalent types); give each type once per sequence"
            )
        seen |= matching
    per_type = [
        list(itertools.chain.from_iterable(get_source_partitions(
            gm.graph, _matching_types(t, include_functional_equivalent), filter_fn).values()))
        for t in partition_types
    ]
    return [chain for chain in itertools.product(*per_type) if _chained(chain)]


def collect_producer_nodes(node: Node) -> list[Node] | None:
    """``node`` and everything it is computed from, or ``None`` when that reaches a graph
    input (a placeholder): the nodes a constant folder could evaluate ahead of time.

    Nodes are listed depth first from ``node``, each once (torchao's may repeat a
    node reached twice).

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("w", torch.ones(2))
    ...     def forward(self, x):
    ...         return x + self.w.relu() * 2
    >>> gm = torch.export.export(M(), (torch.randn(2),)).module()
    >>> mul = next(n for n in gm.graph.nodes if n.name == "mul")
    >>> [n.name for n in collect_producer_nodes(mul)]
    ['mul', 'relu', 'w']
    >>> add = next(n for n in gm.graph.nodes if n.name == "add")
    >>> collect_producer_nodes(add) is None
    True
    """
    nodes = [node]
    seen = {node}
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for arg in (*current.args, *current.kwargs.values()):
            if not isinstance(arg, Node):
                continue
            if arg.op == "placeholder":
                return None
            if arg not in seen:
                seen.add(arg)
                nodes.append(arg)
                frontier.append(arg)
    return nodes
