"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", Sec. 4.1), and the channel scaling it shares with SmoothQuant.

For two layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positively homogeneous
(identity or ``relu``: ``f(x / s) = f(x) / s`` for ``s > 0``), dividing output channel
``i`` of layer 1 by ``s_i`` and multiplying input channel ``i`` of layer 2 by ``s_i``
leaves the float model unchanged. With ``r1_i = max|W1[i]|`` and ``r2_i = max|W2[:, i]|``
the paper's choice ``s_i = sqrt(r1_i / r2_i)`` (``= sqrt(r1_i r2_i) / r2_i``) gives both
weights the range ``sqrt(r1_i r2_i)`` in channel ``i``, which is what per-tensor weight
quantization needs and what evens out the channels of the activation between them.
Chains (conv -> conv -> conv) are equalized pair by pair, repeated until the scales
settle. Batch norms are folded first. It needs no data.

Worked example: ``r1 = (8, 0.5)``, ``r2 = (0.5, 2)`` gives ``s = (4, 0.5)`` and both
layers' channel ranges become ``(2, 1)``.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
>>> with torch.no_grad():
...     _ = m[0].weight.mul_(torch.tensor([100.0, 1.0, 0.01, 1.0]).view(4, 1, 1, 1))
>>> x = torch.randn(1, 3, 5, 5)
>>> gm = torch.export.export(m, (x,)).module()
>>> result = CrossLayerEqualization()(gm)
>>> result.modified, torch.allclose(gm(x), m(x), rtol=1e-4, atol=1e-4)
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .batchnorm import fold_bn_into_preceding_op
from .errors import ArgumentValueError, UnsupportedOperationError
from .graph import attr_value, conv_args, copy_meta, describe_node, module_path, register_constant
from .ops import CONV_OPS, LINEAR_OPS

__all__ = [
    "CrossLayerEqualization",
    "ScaledLayer",
    "Consumer",
    "consumer",
    "constant",
    "channel_axis_of_input",
    "foldable_producer",
    "scale_input_channels",
]

aten = torch.ops.aten

#: ops with f(x / s) = f(x) / s for every s > 0, applied per channel
HOMOGENEOUS_OPS = frozenset({aten.relu.default, aten.relu_.default, aten.leaky_relu.default})
LAYER_NORM_OPS = frozenset({aten.layer_norm.default})
_MATMUL_OPS = frozenset({aten.matmul.default, aten.mm.default})


@dataclass(frozen=True, kw_only=True)
class Consumer:
    """A conv / linear / constant-weight matmul reading an activation: its weight's
    ``get_attr`` node and the weight axis that meets the activation's channels."""

    node: Node
    weight: Node
    in_axis: int


@dataclass(frozen=True, kw_only=True)
class ScaledLayer:
    """What one channel scaling did: the layers whose input channels were scaled,
    where the inverse went (``how``), and the range of the scales."""

    layers: tuple[str, ...]
    how: str
    min_scale: float
    max_scale: float


def _weight_value(node: Node) -> torch.Tensor | None:
    owner = node.graph.owning_module
    if not isinstance(node, Node) or node.op != "get_attr" or owner is None:
        return None
    value = attr_value(owner, str(node.target))
    return value if isinstance(value, torch.Tensor) else None


def constant(node: Any) -> torch.Tensor:
    """The tensor a ``get_attr`` node reads; a clear error for anything else.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 3), (torch.randn(1, 2),)).module()
    >>> tuple(constant(next(n for n in gm.graph.nodes if n.op == "get_attr")).shape)
    (3, 2)
    """
    value = _weight_value(node) if isinstance(node, Node) else None
    if value is None:
        where = describe_node(node) if isinstance(node, Node) else repr(node)
        raise UnsupportedOperationError(
            f"{where} is not a constant tensor (a get_attr); channel scaling needs constant "
            "weights: export the model with its parameters (torch.export.export(...).module())")
    return value


def consumer(node: Node) -> Consumer | None:
    """``node`` as a :class:`Consumer` if its weight is a constant whose input-channel axis
    is known (linear; conv with ``groups == 1``; depthwise conv; ``matmul(x, W)``), else ``None``.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),)).module()
    >>> lin = next(n for n in gm.graph.nodes if n.op == "call_function")
    >>> consumer(lin).in_axis
    1
    """
    if node.op != "call_function" or not node.args:
        return None
    if node.target in LINEAR_OPS or node.target in CONV_OPS:
        w = node.args[1] if len(node.args) > 1 else None
        if not isinstance(w, Node) or _weight_value(w) is None:
            return None
        if node.target in LINEAR_OPS:
            return Consumer(node=node, weight=w, in_axis=1)
        groups = conv_args(node).groups
        value = constant(w)
        if groups == 1:
            return Consumer(node=node, weight=w, in_axis=1)
        if value.shape[1] == 1 and groups == value.shape[0]:  # depthwise: channel i -> output i
            return Consumer(node=node, weight=w, in_axis=0)
        return None
    if node.target in _MATMUL_OPS and len(node.args) == 2:
        mat = node.args[1]
        if isinstance(mat, Node):
            m = _weight_value(mat)
            if m is not None and m.dim() == 2:
                return Consumer(node=node, weight=mat, in_axis=0)
    return None


def channel_axis_of_input(c: Consumer) -> int:
    """The activation axis holding the channels ``c`` reads: 1 for a conv, -1 otherwise."""
    return 1 if c.node.target in CONV_OPS else -1


def _replace_constant(gm: GraphModule, node: Node, get_attr: Node, value: torch.Tensor,
                      stem: str) -> None:
    """Point ``node``'s use of ``get_attr`` at a new constant ``value`` (the old one may be
    shared with another layer, so it is never changed in place)."""
    name = register_constant(gm, stem, value.detach().clone(), parameter=True)
    with gm.graph.inserting_before(get_attr):
        new = gm.graph.get_attr(name)
    copy_meta(new, get_attr)
    old = get_attr.meta.get("val")
    mode = getattr(old, "fake_mode", None)
    new.meta["val"] = mode.from_tensor(getattr(gm, name)) if mode is not None else value
    node.replace_input_with(get_attr, new)


def _channel_shape(value: torch.Tensor, axis: int, n: int) -> list[int]:
    shape = [1] * value.dim()
    shape[axis] = n
    return shape


def _scale_weight(gm: GraphModule, c: Consumer, s: torch.Tensor) -> None:
    w = constant(c.weight)
    _replace_constant(gm, c.node, c.weight, w * s.to(w.dtype).view(_channel_shape(w, c.in_axis, s.numel())),
                      f"{str(c.weight.target)}_scaled")


def foldable_producer(act: Node, consumers: list[Consumer]) -> tuple[Node, list[Node]] | None:
    """The layer whose output channels can absorb ``1 / s`` for ``consumers``, and the
    homogeneous ops (``relu``) between it and ``act``; ``None`` when there is none.

    It must be a conv/linear with a constant weight or a ``layer_norm`` with constant
    affine parameters, and nothing but ``consumers`` may read its output (through the ops
    in between), or scaling it would change another branch.
    """
    users = {c.node for c in consumers}
    chain: list[Node] = []
    node = act
    while True:
        if set(node.users) - users or node.op != "call_function":
            return None
        if node.target in HOMOGENEOUS_OPS and isinstance(node.args[0], Node):
            chain.append(node)
            users = {node}
            node = node.args[0]
            continue
        break
    conv_consumers = all(channel_axis_of_input(c) == 1 for c in consumers)
    if node.target in CONV_OPS or node.target in LINEAR_OPS:
        if (node.target in CONV_OPS) != conv_consumers:
            return None
        w = node.args[1] if len(node.args) > 1 else None
        b = node.args[2] if len(node.args) > 2 else None
        if not isinstance(w, Node) or _weight_value(w) is None:
            return None
        if b is not None and (not isinstance(b, Node) or _weight_value(b) is None):
            return None
        return node, chain
    if node.target in LAYER_NORM_OPS and not conv_consumers:
        w = node.args[2] if len(node.args) > 2 else None
        b = node.args[3] if len(node.args) > 3 else None
        if len(node.args[1]) != 1 or not isinstance(w, Node) or _weight_value(w) is None:  # type: ignore[arg-type]
            return None
        if b is not None and (not isinstance(b, Node) or _weight_value(b) is None):
            return None
        return node, chain
    return None


def scale_input_channels(gm: GraphModule, act: Node, consumers: list[Consumer],
                         s: torch.Tensor) -> ScaledLayer:
    """Divide channel ``j`` of activation ``act`` by ``s[j]`` and multiply the matching
    weight channels of every consumer by ``s[j]``: the float model is unchanged.

    The division is folded into the producing layer when :func:`foldable_producer`
    finds one (its weight rows and bias), otherwise a constant ``mul`` is inserted in
    front of the consumers. Call ``gm.graph.lint()`` and ``gm.recompile()`` afterwards.
    """
    if s.dim() != 1 or not torch.all(s > 0) or not torch.all(torch.isfinite(s)):
        raise ArgumentValueError(
            f"scale_input_channels({describe_node(act)}): scales must be a 1-D tensor of finite "
            "positive numbers (one per channel)")
    s = s.detach().float()
    found = foldable_producer(act, consumers)
    if found is not None:
        producer, _ = found
        inv = 1.0 / s
        if producer.target in LAYER_NORM_OPS:
            params = [(2, producer.args[2]), (3, producer.args[3] if len(producer.args) > 3 else None)]
        else:
            params = [(1, producer.args[1]), (2, producer.args[2] if len(producer.args) > 2 else None)]
        for _, p in params:
            if isinstance(p, Node):
                v = constant(p)
                _replace_constant(gm, producer, p, v * inv.to(v.dtype).view(_channel_shape(v, 0, s.numel())),
                                  f"{str(p.target)}_scaled")
        how = f"folded into {producer.name}"
    else:
        val = act.meta.get("val")
        axis = channel_axis_of_input(consumers[0])
        ndim = val.dim() if isinstance(val, torch.Tensor) else (4 if axis == 1 else 1)
        shape = [s.numel()] + [1] * (ndim - 2) if axis == 1 else [s.numel()]
        name = register_constant(gm, f"{act.name}_smooth_scale", (1.0 / s).view(shape))
        first = min((c.node for c in consumers), key=lambda n: list(gm.graph.nodes).index(n))
        with gm.graph.inserting_before(first):
            inv_node = gm.graph.get_attr(name)
            mul = gm.graph.call_function(aten.mul.Tensor, (act, inv_node))
        copy_meta(mul, consumers[0].node, keys=("nn_module_stack", "stack_trace"))
        copy_meta(inv_node, consumers[0].node, keys=("nn_module_stack", "stack_trace"))
        if isinstance(val, torch.Tensor):
            mul.meta["val"] = val
            mode = getattr(val, "fake_mode", None)
            inv_node.meta["val"] = mode.from_tensor(getattr(gm, name)) if mode is not None else getattr(gm, name)
        for c in consumers:
            c.node.replace_input_with(act, mul)
        how = f"mul inserted after {act.name}"
    for c in consumers:
        _scale_weight(gm, c, s)
    return ScaledLayer(layers=tuple(module_path(c.node) or c.node.name for c in consumers), how=how,
                       min_scale=float(s.min()), max_scale=float(s.max()))


def _out_range(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().flatten(1).amax(1)


def _in_range(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.detach().abs().transpose(0, axis).flatten(1).amax(1)


def _pairs(gm: GraphModule) -> list[tuple[Node, Consumer]]:
    out = []
    for node in gm.graph.nodes:
        c = consumer(node)
        if c is None or node.target not in CONV_OPS | LINEAR_OPS:
            continue
        act = node.args[0]
        if not isinstance(act, Node):
            continue
        found = foldable_producer(act, [c])
        if found is not None and found[0].target not in LAYER_NORM_OPS:
            out.append((act, c))
    return out


class CrossLayerEqualization(PassBase):
    """Equalize the per-channel weight ranges of consecutive conv/linear layers (data-free).

    ``iterations`` bounds the sweeps over a chain; a sweep stops early once no scale
    moves by more than ``tolerance``. After the pass ``layers`` lists each equalized pair
    (the consumer's module path, the producer it was folded into, the scale range).
    Example: see the module docstring; the scale identity is checked by
    ``tests/pt2e/test_equalization.py``.
    """

    def __init__(self, *, iterations: int = 20, tolerance: float = 1e-3,
                 max_scale: float = 1e4) -> None:
        super().__init__()
        if iterations < 1:
            raise ArgumentValueError(f"CrossLayerEqualization(iterations={iterations}): pass >= 1")
        self.iterations = iterations
        self.tolerance = tolerance
        self.max_scale = max_scale
        self.layers: tuple[ScaledLayer, ...] = ()

    def call(self, graph_module: GraphModule) -> PassResult:
        """Fold batch norms, then equalize every conv/linear -> (relu) -> conv/linear pair."""
        folded = fold_bn_into_preceding_op(graph_module)
        done: dict[str, ScaledLayer] = {}
        for _ in range(self.iterations):
            moved = 0.0
            for act, c in _pairs(graph_module):
                found = foldable_producer(act, [c])
                if found is None:  # an earlier scaling in this sweep changed the graph
                    continue
                w1, w2 = constant(found[0].args[1]), constant(c.weight)
                r1, r2 = _out_range(w1), _in_range(w2, c.in_axis)
                s = torch.where((r1 > 0) & (r2 > 0), (r1 / r2.clamp(min=1e-12)).sqrt(), torch.ones_like(r1))
                s = s.clamp(1.0 / self.max_scale, self.max_scale)
                moved = max(moved, float((s.log()).abs().max()))
                if float((s - 1).abs().max()) <= self.tolerance:
                    continue
                rec = scale_input_channels(graph_module, act, [c], s)
                prev = done.get(rec.layers[0])
                if prev is not None:
                    rec = ScaledLayer(layers=rec.layers, how=rec.how,
                                      min_scale=min(prev.min_scale, rec.min_scale),
                                      max_scale=max(prev.max_scale, rec.max_scale))
                done[rec.layers[0]] = rec
            if moved <= math.log1p(self.tolerance):
                break
        self.layers = tuple(done.values())
        modified = bool(done) or bool(folded)
        if modified:
            _drop_dead_constants(graph_module)
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)


def _drop_dead_constants(gm: GraphModule) -> None:
    from .fold import drop_unused_attributes

    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    drop_unused_attributes(gm)
