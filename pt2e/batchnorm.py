"""Fold eval-mode batch norm into the convolution or linear layer before it.

``y = bn(conv(x, W, b))`` with running statistics ``mean, var`` and affine
``gamma, beta`` equals ``conv(x, W', b')`` where, per output channel ``c``::

    s_c  = gamma_c / sqrt(var_c + eps)
    W'_c = W_c * s_c
    b'_c = (b_c - mean_c) * s_c + beta_c

Folding before annotation means the weight observer sees the weight that will
really be used, and the backend needs no batch-norm kernel.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.fx import GraphModule, Node

from .graph import (
    attr_value,
    batch_norm_args,
    conv_args,
    copy_meta,
    describe_node,
    register_constant,
    remove_dead_code,
)
from .ops import BATCH_NORM_OPS, CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS

__all__ = [
    "channel_axis_matches",
    "fold_bn_into_preceding_op",
    "folded_weight_and_bias",
    "replace_batch_norm",
    "warn_not_folded",
]

aten = torch.ops.aten


def _attr(gm: GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, Node) or node.op != "get_attr":
        raise _NotFoldable
    return attr_value(gm, str(node.target))


def folded_weight_and_bias(
    w: torch.Tensor,
    b: torch.Tensor | None,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    out_axis: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of the module docstring; ``out_axis`` is the weight's output-channel axis."""
    with torch.no_grad():
        s = torch.rsqrt(var + eps)
        if gamma is not None:
            s = s * gamma
        shape = [1] * w.dim()
        shape[out_axis] = -1
        new_w = w * s.reshape(shape)
        new_b = ((b if b is not None else torch.zeros_like(mean)) - mean) * s
        if beta is not None:
            new_b = new_b + beta
    return new_w, new_b


class _NotFoldable(Exception):
    pass


def replace_batch_norm(graph: torch.fx.Graph, bn: Node, replacement: Node) -> None:
    """Route ``bn``'s users to ``replacement`` and erase ``bn``.

    ``aten.batch_norm`` returns a tensor; ``_native_batch_norm_legit_no_training``
    returns a tuple read through ``getitem`` nodes, which go too.
    """
    if bn.target == aten.batch_norm.default:
        bn.replace_all_uses_with(replacement)
    else:
        for user in list(bn.users):
            user.replace_all_uses_with(replacement)
            graph.erase_node(user)
    graph.erase_node(bn)


def channel_axis_matches(producer: Node, weight: torch.Tensor) -> bool:
    """Whether batch norm's channel axis (dim 1) is ``producer``'s output-feature axis.

    A convolution's output channels are dim 1 when its input is batched (output rank
    equals the weight's rank); a linear's output features are its last dim, which is
    dim 1 only for a 2-D output. On a ``(N, L, C)`` linear output batch norm normalises
    ``L``, and folding it into the weight would change the result.
    """
    val = producer.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return False
    if producer.target in LINEAR_OPS:
        return val.dim() == 2
    return val.dim() == weight.dim()


def warn_not_folded(producer: Node, bn: Node) -> None:
    """Warn that ``bn`` stays in the graph because its channel axis is not ``producer``'s."""
    val = producer.meta.get("val")
    shape = tuple(val.shape) if isinstance(val, torch.Tensor) else "unknown"
    warnings.warn(
        f"batch norm {describe_node(bn)} was not folded into {describe_node(producer)}: "
        f"it normalises dim 1 of a {shape} output, which is not the layer's output-feature "
        "axis, so folding would change the result. It stays a float batch norm; to fold it, "
        "put the features on dim 1 (e.g. permute to (N, C, L) before the batch norm, or use "
        "a 2-D input for a linear)",
        UserWarning,
        stacklevel=3,
    )


def _set_meta(node: Node, like: Node, value: torch.Tensor) -> None:
    """Give a new get_attr node ``like``'s provenance and a fake ``val`` of its value."""
    copy_meta(node, like)
    old = like.meta.get("val")
    mode = getattr(old, "fake_mode", None)
    node.meta["val"] = mode.from_tensor(value) if mode is not None else value


def fold_bn_into_preceding_op(gm: GraphModule) -> int:
    """Fold every eval-mode batch norm that directly follows a conv / conv-transpose / linear.

    The producer must have the batch norm as its only user and take its weight (and
    bias, if any) from ``get_attr`` nodes. New folded parameters are registered under
    fresh names, so a weight shared with another layer is never changed. Returns the
    number of batch norms folded.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    >>> m[1].running_mean.uniform_(); m[1].running_var.uniform_(1, 2)  # doctest: +ELLIPSIS
    tensor(...)
    tensor(...)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> gm = torch.export.export(m, (x,)).module()
    >>> fold_bn_into_preceding_op(gm)
    1
    >>> torch.allclose(gm(x), m(x), atol=1e-5)
    True
    """
    folded = 0
    graph = gm.graph
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORM_OPS:
            continue
        params = batch_norm_args(bn)
        producer = params.input
        if params.training or not isinstance(producer, Node) or len(producer.users) != 1:
            continue
        if producer.target in CONV_OPS | LINEAR_OPS:
            out_axis = 0
        elif producer.target in CONV_TRANSPOSE_OPS:
            out_axis = 1
            if conv_args(producer).groups != 1:
                continue
        else:
            continue
        w_arg = producer.args[1]
        b_arg = producer.args[2] if len(producer.args) > 2 else None
        try:
            w = _attr(gm, w_arg)
            b = _attr(gm, b_arg)
            gamma, beta, mean, var = (_attr(gm, p) for p in (
                params.weight, params.bias, params.running_mean, params.running_var))
        except _NotFoldable:
            continue
        if not isinstance(w_arg, Node) or w is None or mean is None or var is None:
            continue  # no weight or no running statistics: nothing to fold into
        if not channel_axis_matches(producer, w):
            warn_not_folded(producer, bn)
            continue
        new_w, new_b = folded_weight_and_bias(w, b, gamma, beta, mean, var, params.eps, out_axis)
        b_base = b_arg.target if isinstance(b_arg, Node) else f"{w_arg.target}_bias"
        w_name = register_constant(gm, f"{w_arg.target}_bn_folded", new_w.detach().clone(),
                                   parameter=True)
        b_name = register_constant(gm, f"{b_base}_bn_folded", new_b.detach().clone(),
                                   parameter=True)
        with graph.inserting_before(producer):
            w_node = graph.get_attr(w_name)
            b_node = graph.get_attr(b_name)
        _set_meta(w_node, w_arg, new_w)
        _set_meta(b_node, b_arg if isinstance(b_arg, Node) else w_arg, new_b)
        args = list(producer.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = w_node, b_node
        producer.args = tuple(args)
        replace_batch_norm(graph, bn, producer)
        folded += 1
    if folded:
        remove_dead_code(gm, recompile=False)
        graph.lint()
        gm.recompile()
    return folded
