"""Rewrite quantize/dequantize patterns into explicit integer arithmetic.

``convert_pt2e(..., use_reference_representation=True)`` produces a graph that
spells out what an integer backend computes, using plain ATen ops only:

* ``quantize_per_tensor(x)``      -> ``clamp(round(x * (1/s)) + zp, qmin, qmax).to(int8)``
* ``dequantize_per_tensor(q)``    -> ``(q.to(float) - zp) * s``
* ``dequantize_per_channel(q)``   -> ``(q - zp[c]) * s[c]`` with per-channel broadcasting
* ``linear(dq(xq), dq(wq), b)``   -> ``(xq - zp_x) @ wq.T`` accumulated in int32, then
  ``acc * (s_x * s_w) + b`` (symmetric weights, zp_w = 0)
* ``q(add(dq(xq), dq(yq)))`` and ``q(relu(add(...)))`` -> the quantized output straight
  from the integers, as torchao's reference add does::

      out_q = clamp(round((xq - zp_x) * (s_x / s_out)) + round((yq - zp_y) * (s_y / s_out))
                    + zp_out, lo, qmax)          # lo = zp_out with relu, else qmin

  each term rescaled into the output's scale and rounded to int32. torchao's reference
  add rounds the same way; its add-relu casts the rescaled terms with
  ``torch.ops.higher_order.out_dtype(mul, int32, ...)``, which truncates toward zero:
  rounding keeps add-relu as close to the q/dq graph as add (a deliberate difference,
  listed in ``docs/design.md``).

The rewrite is numerically equivalent to the q/dq graph for q/dq and linear: the
quantize/dequantize formulas are those of ``torch.ops.quantized_decomposed``, and the
int32 matmul is exact, so outputs differ only by float summation order. The integer
add rounds each rescaled term separately, so its output is within one quantization
step of the q/dq graph's (``tests/pt2e/test_reference_representation.py`` checks
both against the closed form).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from .fold import constant_value
from .graph import copy_meta, remove_dead_code
from .ops import QD

__all__ = ["reference_representation_rewrite", "rewrite_to_reference_representation"]

aten = torch.ops.aten


def _call(graph: torch.fx.Graph, op: Any, *args: Any, **kwargs: Any) -> Node:
    return graph.call_function(op, args, kwargs)


def _to(graph: torch.fx.Graph, x: Any, dtype: torch.dtype) -> Node:
    return _call(graph, aten._to_copy.default, x, dtype=dtype)


def _channel_view(graph: torch.fx.Graph, t: Node, axis: int, ndim: int) -> Node:
    shape = [1] * ndim
    shape[axis] = -1
    return _call(graph, aten.view.default, t, shape)


def _static_dq_per_tensor(node: Any) -> bool:
    return isinstance(node, Node) and node.target == QD.dequantize_per_tensor.default


def _inherit_meta(node: Node, anchor: Node) -> None:
    """Give the nodes just inserted between ``anchor`` and ``node`` ``node``'s provenance."""
    n = node.prev
    while n is not anchor:
        copy_meta(n, node)
        n = n.prev


def _rewrite_linear(model: GraphModule, lin: Node) -> bool:
    """Integer linear for ``dq(x) , dq(w) -> linear``; returns whether it rewrote."""
    graph = model.graph
    x_dq, w_dq = lin.args[0], lin.args[1]
    bias = lin.args[2] if len(lin.args) > 2 else None
    if not isinstance(x_dq, Node) or not _static_dq_per_tensor(x_dq) or not isinstance(w_dq, Node):
        return False
    w_q = w_dq.args[0]
    if w_dq.target == QD.dequantize_per_channel.default:
        w_value = constant_value(model, w_q)  # type: ignore[arg-type]
        zp = constant_value(model, w_dq.args[2])  # type: ignore[arg-type]
        if w_value is None or zp is None or bool(zp.any()) or w_dq.args[3] != 0:
            return False
        w_scale: Any = w_dq.args[1]
    elif _static_dq_per_tensor(w_dq) and w_dq.args[2] == 0:
        w_scale = float(w_dq.args[1])  # type: ignore[arg-type]
    else:
        return False
    x_q, x_scale, x_zp = x_dq.args[0], float(x_dq.args[1]), int(x_dq.args[2])  # type: ignore[arg-type]
    anchor = lin.prev
    with graph.inserting_before(lin):
        x_i = _call(graph, aten.sub.Tensor, _to(graph, x_q, torch.int32), x_zp)
        w_i = _to(graph, w_q, torch.int32)
        acc = _call(graph, aten.matmul.default, x_i, _call(graph, aten.t.default, w_i))
        scale = _call(graph, aten.mul.Tensor, w_scale, x_scale) if isinstance(w_scale, Node) \
            else x_scale * w_scale
        out = _call(graph, aten.mul.Tensor, _to(graph, acc, torch.float32), scale)
        if bias is not None:
            out = _call(graph, aten.add.Tensor, out, bias)
    _inherit_meta(lin, anchor)
    lin.replace_all_uses_with(out)
    graph.erase_node(lin)
    return True


_RELU_OPS = (aten.relu.default, aten.relu_.default)
_ADD_OPS = (aten.add.Tensor, aten.add_.Tensor)


def _int32_rescaled(graph: torch.fx.Graph, q: Any, zp: int, ratio: float) -> Node:
    """``round((q - zp) * ratio)`` as int32."""
    diff = _call(graph, aten.sub.Tensor, _to(graph, q, torch.int32), zp)
    scaled = _call(graph, aten.round.default, _call(graph, aten.mul.Tensor, diff, ratio))
    return _to(graph, scaled, torch.int32)


def _rewrite_add(model: GraphModule, add: Node) -> bool:
    """Integer add for ``dq(x), dq(y) -> add [-> relu] -> q``; returns whether it rewrote."""
    graph = model.graph
    if len(add.args) != 2 or add.kwargs or len(add.users) != 1:
        return False
    x_dq, y_dq = add.args
    if not (_static_dq_per_tensor(x_dq) and _static_dq_per_tensor(y_dq)):
        return False
    last, relu = add, False
    user = next(iter(add.users))
    if user.op == "call_function" and user.target in _RELU_OPS and len(user.users) == 1:
        last, relu, user = user, True, next(iter(user.users))
    if user.op != "call_function" or user.target != QD.quantize_per_tensor.default:
        return False
    out_s, out_zp, qmin, qmax, dtype = user.args[1:6]
    (xq, xs, xzp), (yq, ys, yzp) = x_dq.args[:3], y_dq.args[:3]  # type: ignore[union-attr]
    anchor = user.prev
    with graph.inserting_before(user):
        x_i = _int32_rescaled(graph, xq, int(xzp), float(xs) / float(out_s))  # type: ignore[arg-type]
        y_i = _int32_rescaled(graph, yq, int(yzp), float(ys) / float(out_s))  # type: ignore[arg-type]
        acc = _call(graph, aten.add.Tensor, _call(graph, aten.add.Tensor, x_i, y_i), out_zp)
        lo = out_zp if relu else qmin
        new = _to(graph, _call(graph, aten.clamp.default, acc, lo, qmax), dtype)  # type: ignore[arg-type]
    _inherit_meta(user, anchor)
    user.replace_all_uses_with(new)
    graph.erase_node(user)
    if relu:
        graph.erase_node(last)
    graph.erase_node(add)
    return True


def _rewrite_qdq(model: GraphModule, node: Node) -> bool:
    graph = model.graph
    t = node.target
    anchor = node.prev
    with graph.inserting_before(node):
        if t == QD.quantize_per_tensor.default:
            x, s, zp, qmin, qmax, dtype = node.args[:6]
            r = _call(graph, aten.round.default, _call(graph, aten.mul.Tensor, x, 1.0 / s))  # type: ignore[operator]
            c = _call(graph, aten.clamp.default, _call(graph, aten.add.Tensor, r, zp), qmin, qmax)
            new = _to(graph, c, dtype)  # type: ignore[arg-type]
        elif t == QD.dequantize_per_tensor.default:
            q, s, zp = node.args[:3]
            out_dtype: Any = node.kwargs.get("out_dtype") or torch.float32
            new = _call(graph, aten.mul.Tensor,
                        _call(graph, aten.sub.Tensor, _to(graph, q, out_dtype), zp), s)
        elif t == QD.dequantize_per_channel.default:
            q, s, zp, axis = node.args[:4]
            value = constant_value(model, q)  # type: ignore[arg-type]
            val = q.meta.get("val") if isinstance(q, Node) else None
            ndim = value.dim() if value is not None else (val.dim() if val is not None else None)
            if ndim is None:
                return False
            diff = _call(graph, aten.sub.Tensor, _to(graph, q, torch.int32),
                         _channel_view(graph, zp, axis, ndim))  # type: ignore[arg-type]
            new = _call(graph, aten.mul.Tensor, diff, _channel_view(graph, s, axis, ndim))  # type: ignore[arg-type]
        else:
            return False
    _inherit_meta(node, anchor)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def rewrite_to_reference_representation(model: GraphModule) -> int:
    """Rewrite supported patterns in place; return how many nodes were rewritten.

    >>> import torch
    >>> from pt2e.ops import QD
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = QD.quantize_per_tensor.default(x, 0.1, 3, 0, 255, torch.uint8)
    ...         return QD.dequantize_per_tensor.default(q, 0.1, 3, 0, 255, torch.uint8)
    >>> gm = torch.export.export(M(), (torch.randn(5),)).module()
    >>> x = torch.randn(5)
    >>> before = gm(x)
    >>> rewrite_to_reference_representation(gm)
    2
    >>> torch.equal(gm(x), before)
    True
    """
    count = 0
    for node in list(model.graph.nodes):
        if node.op == "call_function" and node.target == aten.linear.default:
            count += _rewrite_linear(model, node)
        elif node.op == "call_function" and node.target in _ADD_OPS:
            count += _rewrite_add(model, node)
    for node in list(model.graph.nodes):
        if node.op == "call_function" and node.users:
            count += _rewrite_qdq(model, node)
    remove_dead_code(model, recompile=False)
    model.graph.lint()
    model.recompile()
    return count


def reference_representation_rewrite(model: GraphModule) -> GraphModule:
    """torchao's public entry point: rewrite ``model`` (a converted q/dq graph) in place
    into integer arithmetic and return it; ``convert_pt2e(...,
    use_reference_representation=True)`` calls the same rewrite.

    >>> import torch
    >>> from pt2e.ops import QD
    >>> class Add(torch.nn.Module):
    ...     def forward(self, x, y):
    ...         dq = QD.dequantize_per_tensor.default
    ...         s = torch.add(dq(x, 0.5, 0, -128, 127, torch.int8), dq(y, 0.25, 0, -128, 127, torch.int8))
    ...         return QD.quantize_per_tensor.default(s, 1.0, 0, -128, 127, torch.int8)
    >>> x, y = torch.tensor([4, 100], dtype=torch.int8), torch.tensor([8, 100], dtype=torch.int8)
    >>> gm = reference_representation_rewrite(torch.export.export(Add(), (x, y)).module())
    >>> gm(x, y)        # 4*0.5 + 8*0.25 = 4; 50 + 25 = 75
    tensor([ 4, 75], dtype=torch.int8)
    >>> any("quantize" in str(n.target) for n in gm.graph.nodes)
    False
    """
    rewrite_to_reference_representation(model)
    return model
