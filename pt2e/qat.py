"""Conv + batch norm during quantization-aware training.

After convert, batch norm is folded into the conv, so the weight the backend
quantizes is ``W * gamma / sqrt(running_var + eps)``. Training must fake-quantize
*that* weight, while batch norm keeps normalising with batch statistics and
updating its running ones. :func:`simulate_qat_conv_bn` rewrites::

    conv(x, W, b) -> batch_norm

into::

    s = gamma / sqrt(running_var + eps)            # per output channel
    y = conv(x, fq(W * s), None) / s + b           # fq: the weight's fake quantizer
    batch_norm(y)                                  # unchanged, still in train mode

``y`` equals ``conv(x, W, b)`` up to the weight's fake quantization, so batch norm
sees the same statistics as the float model. :func:`fold_qat_conv_bn`, the first
step of ``convert_pt2e``, replaces the whole construct by ``conv(x, fq(W_f), b_f)``
with the folded weight and bias, keeping the fake quantizer (and its learned
qparams), so a QAT-converted graph has the same q/dq structure as a PTQ one.

The rewrite is recorded in the conv node's ``meta["pt2e_qat_conv_bn"]`` by node
names, which survive ``copy.deepcopy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from .batchnorm import (
    channel_axis_matches,
    folded_weight_and_bias,
    replace_batch_norm,
    warn_not_folded,
)
from .graph import (
    attr_value,
    batch_norm_args,
    conv_args,
    copy_meta,
    register_constant,
    remove_dead_code,
)
from .ops import BATCH_NORM_OPS, CONV_OPS, CONV_TRANSPOSE_OPS
from .quantizer.annotation import annotate_output_qspec, get_annotation

__all__ = ["simulate_qat_conv_bn", "fold_qat_conv_bn", "QAT_CONV_BN_KEY"]

QAT_CONV_BN_KEY = "pt2e_qat_conv_bn"
aten = torch.ops.aten


def _is_attr(n: Any) -> bool:
    return n is None or (isinstance(n, Node) and n.op == "get_attr")


def _move_annotations(conv: Node, bn: Node, w: Node, b: Any, scaled_w: Node) -> None:
    """Re-point the conv's annotation at the rewritten graph.

    The weight's spec applies to the scaled weight; a bias spec has no edge left. An
    output spec on the conv describes the folded conv's output, which is the batch
    norm's output here: it moves there unless the batch norm has its own.
    """
    ann = get_annotation(conv)
    if ann is None:
        return
    qmap = ann.input_qspec_map
    if w in qmap:
        qmap[scaled_w] = qmap.pop(w)
    if b is not None:
        qmap.pop(b, None)
    out = ann.output_qspec
    if out is not None:
        ann.output_qspec = None
        bn_ann = get_annotation(bn)
        if bn_ann is None or bn_ann.output_qspec is None:
            annotate_output_qspec(bn, out)


def simulate_qat_conv_bn(model: GraphModule) -> int:
    """Rewrite every conv -> batch_norm pair for QAT (see module docstring); return the count."""
    graph = model.graph
    count = 0
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORM_OPS:
            continue
        conv = bn.args[0]
        if not isinstance(conv, Node) or len(conv.users) != 1:
            continue
        if conv.target in CONV_OPS:
            out_axis = 0
        elif conv.target in CONV_TRANSPOSE_OPS:
            out_axis = 1
        else:
            continue
        w, shape = conv.args[1], conv_args(conv)
        b = shape.bias
        a = batch_norm_args(bn)
        gamma, mean, var, eps = a.weight, a.running_mean, a.running_var, a.eps
        if not isinstance(w, Node) or not all(_is_attr(n) for n in (w, b, gamma, mean, var)):
            continue
        if mean is None or var is None:
            continue  # no running statistics (track_running_stats=False): convert cannot fold
        w_value = attr_value(model, str(w.target))
        if shape.transposed and shape.groups != 1:
            continue  # a grouped transposed weight holds out/groups channels on its axis 1
        if not channel_axis_matches(conv, w_value):
            warn_not_folded(conv, bn)
            continue
        ndim = w_value.dim()
        w_shape = [1] * ndim
        w_shape[out_axis] = -1
        y_shape = [1] * ndim
        y_shape[1] = -1
        with graph.inserting_before(conv):
            var_eps = graph.call_function(aten.add.Tensor, (var, eps))
            rstd = graph.call_function(aten.rsqrt.default, (var_eps,))
            scale = graph.call_function(aten.mul.Tensor, (gamma, rstd)) if gamma is not None else rstd
            w_scale = graph.call_function(aten.reshape.default, (scale, w_shape))
            scaled_w = graph.call_function(aten.mul.Tensor, (w, w_scale))
        for n in (var_eps, rstd, scale, w_scale, scaled_w):
            copy_meta(n, conv)
        args = list(conv.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = scaled_w, None
        conv.args = tuple(args)
        with graph.inserting_after(conv):
            y_scale = graph.call_function(aten.reshape.default, (scale, y_shape))
        with graph.inserting_after(y_scale):
            div = graph.call_function(aten.div.Tensor, (conv, y_scale))
        tail = [y_scale, div]
        if b is not None:
            with graph.inserting_after(div):
                b_view = graph.call_function(aten.reshape.default, (b, y_shape))
            with graph.inserting_after(b_view):
                tail += [b_view, graph.call_function(aten.add.Tensor, (div, b_view))]
        last = tail[-1]
        for n in tail:
            copy_meta(n, conv)
        bn.replace_input_with(conv, last)
        _move_annotations(conv, bn, w, b, scaled_w)
        conv.meta[QAT_CONV_BN_KEY] = {
            "scaled_weight": scaled_w.name,
            "tail": last.name,
            "bn": bn.name,
            "weight": str(w.target),
            "bias": str(b.target) if isinstance(b, Node) else None,
            "out_axis": out_axis,
        }
        count += 1
    if count:
        graph.lint()
        model.recompile()
    return count



def _drop_batch_counter(graph: torch.fx.Graph, running_mean: Any) -> None:
    """Remove the ``num_batches_tracked += 1`` a train-mode export keeps beside a folded BN."""
    if not isinstance(running_mean, Node):
        return
    prefix = str(running_mean.target).rpartition(".")[0]
    counter = f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
    for attr in graph.find_nodes(op="get_attr", target=counter):
        for user in list(attr.users):
            if user.op == "call_function" and not user.users and str(user.target).startswith("aten.add_"):
                graph.erase_node(user)


def fold_qat_conv_bn(model: GraphModule) -> int:
    """Fold the batch norms kept alive by :func:`simulate_qat_conv_bn`; return the count."""
    graph = model.graph
    by_name = {n.name: n for n in graph.nodes}
    count = 0
    for conv in list(graph.nodes):
        info = conv.meta.get(QAT_CONV_BN_KEY)
        if info is None or info["bn"] not in by_name:
            continue
        bn, tail, scaled_w = by_name[info["bn"]], by_name[info["tail"]], by_name[info["scaled_weight"]]
        a = batch_norm_args(bn)
        g, be, m, v = (None if n is None else attr_value(model, str(n.target))
                       for n in (a.weight, a.bias, a.running_mean, a.running_var))
        assert m is not None and v is not None  # simulate_qat_conv_bn only records these
        w = attr_value(model, info["weight"])
        b = attr_value(model, info["bias"]) if info["bias"] else None
        new_w, new_b = folded_weight_and_bias(w, b, g, be, m, v, a.eps, info["out_axis"])
        w_name = register_constant(model, f"{info['weight']}_qat_folded",
                                   new_w.detach().clone(), parameter=True)
        b_name = register_constant(model, f"{info['weight']}_qat_folded_bias",
                                   new_b.detach().clone(), parameter=True)
        with graph.inserting_before(scaled_w):
            w_node = graph.get_attr(w_name)
        with graph.inserting_before(conv):
            b_node = graph.get_attr(b_name)
        copy_meta(w_node, conv)
        copy_meta(b_node, conv)
        scaled_w.replace_all_uses_with(w_node)
        args = list(conv.args)
        args[2] = b_node
        conv.args = tuple(args)
        replace_batch_norm(graph, bn, conv)
        _drop_batch_counter(graph, a.running_mean)
        del tail
        conv.meta.pop(QAT_CONV_BN_KEY)
        count += 1
    if count:
        remove_dead_code(model, recompile=False)
        graph.lint()
        model.recompile()
    return count
