"""Matching operator patterns on an exported ATen graph, shared by backend quantizers.

A backend quantizer is a :class:`PatternTable` of :class:`Pattern` rows plus one
small annotator function per row. A pattern is an *anchor* operator (``conv2d``,
``linear``...) followed by a chain of :class:`Step` s, each the single user of the
node before it. Matching looks at node structure only (targets and users), never
at which ``nn.Module`` a node came from, so a module called twice (one
``self.relu`` in every ResNet block) or a projection inside
``nn.MultiheadAttention`` (which calls ``F.linear`` directly) matches like any
other node.

Worked example: ``conv2d -> add -> relu`` matches the row
``anchor=CONV_OPS, chain=(Step("bn", BATCH_NORM_OPS, optional=True),
Step("binary", ADD_OPS), Step("unary", RELU_OPS))`` as
``{"anchor": conv2d, "binary": add, "unary": relu}``; the optional ``bn`` step
is skipped because ``add`` is not a batch norm.

>>> import torch
>>> table = PatternTable()
>>> @table.register(name="linear_relu", anchor=LINEAR_OPS,
...                 chain=(Step(role="unary", ops=RELU_OPS),), priority=10)
... def _annotate(match, config, ctx):
...     pass
>>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
>>> gm = torch.export.export(m, (torch.randn(1, 2),)).module()
>>> [(mt.pattern.name, sorted(mt.roles)) for mt in table.matches(gm.graph)]
[('linear_relu', ['anchor', 'unary'])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Graph, Node

from pt2e import ops
from pt2e.errors import AnnotationError, ArgumentValueError

__all__ = [
    "ADD_OPS",
    "BATCH_NORM_OPS",
    "CONV_OPS",
    "CONV_UNARY_OPS",
    "LINEAR_OPS",
    "LINEAR_UNARY_OPS",
    "MATMUL_OPS",
    "RELU_OPS",
    "POOL_OPS",
    "CAT_OPS",
    "RESHAPE_OPS",
    "COMPUTE_OPS",
    "Step",
    "Pattern",
    "Match",
    "PatternTable",
    "single_user",
    "weighted_op_parts",
    "other_binary_input",
    "is_tensor_node",
]

aten = torch.ops.aten

# 1-D and 2-D convolutions: the ones the backends here quantize (op families: pt2e.ops)
CONV_OPS = ops.CONV_OPS - {aten.conv3d.default, aten.conv3d.padding}
LINEAR_OPS = ops.LINEAR_OPS
# activation x activation products (attention scores, attention x values)
MATMUL_OPS = frozenset({aten.matmul.default, aten.bmm.default, aten.mm.default})
# the tensor-returning form, the one a pattern step can chain through
BATCH_NORM_OPS = ops.BATCH_NORM_OPS & {aten.batch_norm.default}
ADD_OPS = frozenset({aten.add.Tensor, aten.add_.Tensor})
RELU_OPS = frozenset({aten.relu.default, aten.relu_.default})
# post-ops oneDNN fuses into a quantized conv / linear (nn.ReLU6 exports as hardtanh)
CONV_UNARY_OPS = RELU_OPS | {
    aten.hardtanh.default, aten.hardtanh_.default, aten.hardswish.default,
    aten.hardswish_.default, aten.silu.default, aten.silu_.default, aten.gelu.default,
}
LINEAR_UNARY_OPS = RELU_OPS | {
    aten.gelu.default, aten.leaky_relu.default, aten.leaky_relu_.default, aten.tanh.default,
}
POOL_OPS = frozenset({
    aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default,
})
CAT_OPS = frozenset({aten.cat.default})
RESHAPE_OPS = frozenset({
    aten.flatten.using_ints, aten.reshape.default, aten.view.default,
})
# ops worth reporting when they stay float (they carry most of a model's FLOPs): pt2e.ops' fact
COMPUTE_OPS = ops.COMPUTE_OPS


@dataclass(frozen=True, kw_only=True)
class Step:
    """One link of a pattern's chain: the previous node's single user, with a target in ``ops``."""

    role: str
    ops: frozenset[Any]
    optional: bool = False


Annotator = Callable[["Match", Any, Any], None]


@dataclass(frozen=True, kw_only=True)
class Pattern:
    """A row of a backend's pattern table.

    ``priority``: higher rows are tried first over the whole graph, so a longer
    fusion (``conv+add+relu``) claims its nodes before a shorter one (``conv``).
    ``default``: the row applies under the global config; other rows (e.g.
    attention matmuls) apply only when a module-name or operator-type config asks.
    ``dynamic``: the row applies to dynamic (runtime-qparams) configs too.
    ``propagate``: the row is not tried per config stage but once after all of them,
    in graph order, with no config: ops that reuse their producer's qparams (see
    :func:`quantizers.annotators.annotate_shared_qparams_op`).
    """

    name: str
    anchor: frozenset[Any]
    annotator: Annotator
    priority: int
    chain: tuple[Step, ...] = ()
    default: bool = True
    dynamic: bool = False
    propagate: bool = False


@dataclass
class Match:
    """The nodes a pattern matched, by role (``"anchor"`` plus each matched step's role)."""

    pattern: Pattern
    roles: dict[str, Node] = field(default_factory=dict)

    @property
    def anchor(self) -> Node:
        return self.roles["anchor"]

    @property
    def nodes(self) -> list[Node]:
        return list(self.roles.values())

    @property
    def last(self) -> Node:
        """The node whose output leaves the fused pattern."""
        return self.nodes[-1]


def single_user(node: Node) -> Node | None:
    """``node``'s only user, or ``None`` when it has none or several (a fusion needs exactly one)."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def other_binary_input(binary: Node, operand: Node) -> Node | None:
    """The operand of ``binary`` that is not ``operand``, if it is a distinct node (not a scalar)."""
    if len(binary.args) < 2:
        return None
    a, b = binary.args[0], binary.args[1]
    other = b if a is operand else a if b is operand else None
    if not isinstance(other, Node) or other is operand:
        return None
    return other


def is_tensor_node(arg: object) -> bool:
    """Whether ``arg`` is a node producing a tensor (export records it in ``meta['val']``)."""
    return isinstance(arg, Node) and isinstance(arg.meta.get("val"), torch.Tensor)


def weighted_op_parts(node: Node) -> tuple[Node, Node, Node | None]:
    """``(input, weight, bias)`` of a conv/linear node; ``bias`` is ``None`` when absent.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 3, bias=False), (torch.randn(1, 2),)).module()
    >>> lin = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    >>> [getattr(p, "op", p) for p in weighted_op_parts(lin)]
    ['placeholder', 'get_attr', None]
    """
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if not isinstance(x, Node) or not isinstance(w, Node):
        raise AnnotationError(
            f"{node.name} ({node.target}) has a non-node input or weight {node.args[:2]}; "
            "a conv/linear pattern needs both to be graph nodes"
        )
    return x, w, b if isinstance(b, Node) else None


def _match_chain(anchor: Node, pattern: Pattern) -> Match | None:
    roles: dict[str, Node] = {"anchor": anchor}
    cur = anchor
    for step in pattern.chain:
        nxt = single_user(cur)
        if nxt is not None and nxt.op == "call_function" and nxt.target in step.ops:
            if step.ops <= ADD_OPS and other_binary_input(nxt, cur) is None:
                nxt = None
        else:
            nxt = None
        if nxt is None:
            if step.optional:
                continue
            return None
        roles[step.role] = nxt
        cur = nxt
    return Match(pattern=pattern, roles=roles)


class PatternTable:
    """An ordered set of :class:`Pattern` rows filled by the :meth:`register` decorator.

    Rows iterate by descending ``priority`` (then registration order), which is the
    order a quantizer tries them in.

    >>> t = PatternTable()
    >>> @t.register(name="low", anchor=LINEAR_OPS, priority=1)
    ... def _a(match, config, ctx): pass
    >>> @t.register(name="high", anchor=CONV_OPS, priority=5)
    ... def _b(match, config, ctx): pass
    >>> [p.name for p in t]
    ['high', 'low']
    """

    def __init__(self) -> None:
        self._rows: list[Pattern] = []

    def register(
        self,
        *,
        name: str,
        anchor: frozenset[Any],
        priority: int,
        chain: tuple[Step, ...] = (),
        default: bool = True,
        dynamic: bool = False,
        propagate: bool = False,
    ) -> Callable[[Annotator], Annotator]:
        """Decorator: add a row whose annotator is the decorated function (returned unchanged).

        Decorators stack, so one annotator can serve several rows.
        """
        if any(p.name == name for p in self._rows):
            raise ArgumentValueError(
                f"pattern {name!r} is already registered in this table; pattern names must be unique"
            )

        def deco(fn: Annotator) -> Annotator:
            self._rows.append(Pattern(
                name=name, anchor=anchor, annotator=fn, priority=priority, chain=chain,
                default=default, dynamic=dynamic, propagate=propagate,
            ))
            return fn

        return deco

    def __iter__(self) -> Iterator[Pattern]:
        order = {id(p): i for i, p in enumerate(self._rows)}
        return iter(sorted(self._rows, key=lambda p: (-p.priority, order[id(p)])))

    def __len__(self) -> int:
        return len(self._rows)

    def derive(self, change: Callable[[Pattern], Pattern | None]) -> PatternTable:
        """A new table of ``change(row)`` for each row, leaving out rows mapped to ``None``.

        How a backend that differs from another only in which ops and steps it
        fuses states that difference as data, reusing the other's annotators.
        Registration order (the tie-break between equal priorities) is kept.

        >>> import dataclasses
        >>> t = PatternTable()
        >>> @t.register(name="conv", anchor=CONV_OPS, priority=1)
        ... def _a(match, config, ctx): pass
        >>> @t.register(name="pool", anchor=POOL_OPS, priority=0)
        ... def _b(match, config, ctx): pass
        >>> d = t.derive(lambda p: None if p.name == "pool" else dataclasses.replace(p, priority=3))
        >>> [(p.name, p.priority) for p in d], len(t)
        ([('conv', 3)], 2)
        """
        table = PatternTable()
        table._rows = [row for row in map(change, self._rows) if row is not None]
        return table

    def matches(self, graph: Graph, *, propagating: bool = False) -> Iterator[Match]:
        """Every match, row by row in priority order, nodes in graph order.

        ``propagating`` selects the ``propagate=True`` rows instead of the others.
        Lazy on purpose: a caller that annotates a match before asking for the next
        one sees its own claims (e.g. through ``any_annotated``).
        """
        for pattern in self:
            if pattern.propagate != propagating:
                continue
            for node in list(graph.nodes):
                if node.op == "call_function" and node.target in pattern.anchor:
                    m = _match_chain(node, pattern)
                    if m is not None:
                        yield m
