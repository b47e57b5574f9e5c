"""Checks and fix-ups on a converted graph before ExecuTorch's XNNPACK delegate sees it.

ExecuTorch accepts some graphs at partition time that XNNPACK then rejects when
the ``.pte`` is loaded (uint8 activations, asymmetric per-tensor weights) or runs
with wrong numbers (per-channel weights with a non-zero zero point, whose zero
point XNNPACK ignores). :func:`check_xnnpack_graph` turns those into a Python
error naming the node, before anything is exported.

:class:`UntieSharedBiasPass` fixes a silent accuracy loss: XNNPACK quantizes a
float bias to int32 with ``input_scale * weight_scale`` of the layer that uses
it and serialises one tensor per graph node, so a bias shared by two layers
(a module applied twice) gets the first layer's scale in both. Giving each use
its own copy of the constant keeps the PyTorch numerics (measured: 6 dB -> 41 dB
SQNR on a linear applied twice).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from pt2e.errors import Pt2eError
from pt2e.fold import drop_unused_attributes
from pt2e.graph import attr_value, copy_meta, module_path, register_constant
from pt2e.ops import (
    CHOOSE_QPARAMS_OPS,
    CONV_OPS,
    CONV_TRANSPOSE_OPS,
    DEQUANTIZE_OPS,
    LINEAR_OPS,
    PER_CHANNEL_OPS,
    QUANTIZE_OPS,
)

__all__ = [
    "XnnpackLoweringError",
    "check_xnnpack_graph",
    "UntieSharedBiasPass",
    "DropUnusedConstantsPass",
    "XNNPACK_WEIGHTED_OPS",
]

aten = torch.ops.aten
# the 1-D/2-D members of pt2e.ops' families, plus edge dialect's convolution
XNNPACK_WEIGHTED_OPS = (
    LINEAR_OPS
    | (CONV_OPS & {aten.conv1d.default, aten.conv2d.default})
    | (CONV_TRANSPOSE_OPS & {aten.conv_transpose1d.default, aten.conv_transpose2d.input})
    | {aten.convolution.default}
)
_QDQ_OPS = QUANTIZE_OPS | DEQUANTIZE_OPS


class XnnpackLoweringError(Pt2eError, ValueError):
    """The converted graph holds a quantization XNNPACK would reject or compute wrongly."""


def _dtype(node: Node) -> torch.dtype | None:
    kw = node.kwargs.get("dtype")
    if isinstance(kw, torch.dtype):
        return kw
    for a in reversed(node.args):
        if isinstance(a, torch.dtype):
            return a
    return None


def _const(gm: GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    obj = attr_value(gm, str(node.target))
    return obj if isinstance(obj, torch.Tensor) else None


def _is_weight_qdq(node: Node) -> bool:
    """A q/dq that feeds a linear/conv's weight (directly, or via its dequantize)."""
    dqs = [node] if node.target in DEQUANTIZE_OPS else [u for u in node.users if u.target in DEQUANTIZE_OPS]
    return any(
        u.op == "call_function" and u.target in XNNPACK_WEIGHTED_OPS and len(u.args) > 1 and u.args[1] is dq
        for dq in dqs for u in dq.users
    )


def _zero_points(gm: GraphModule, node: Node) -> torch.Tensor | None:
    zp = node.args[2] if len(node.args) > 2 else node.kwargs.get("zero_point")
    if isinstance(zp, Node):
        return _const(gm, zp)
    if isinstance(zp, (int, float)):
        return torch.tensor(zp)
    return None


def _where(node: Node) -> str:
    # a weight's q/dq has no module of its own: name the module of the layer that reads it
    module = module_path(node) or next(filter(None, (module_path(u) for u in node.users)), "")
    return f"node '{node.name}'" + (f" (module {module})" if module else "")


def check_xnnpack_graph(gm: GraphModule) -> None:
    """Raise :class:`XnnpackLoweringError` for quantization XNNPACK cannot run correctly.

    Checked: every quantize/dequantize uses ``torch.int8`` (XNNPACK has no uint8
    or int16 path here: uint8 fails when the ``.pte`` loads, int16 inside the
    partitioner with an unrelated message); weights are symmetric (zero point 0).

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.1, 128, 0, 255, torch.uint8)
    ...         return qd.dequantize_per_tensor.default(q, 0.1, 128, 0, 255, torch.uint8)
    >>> check_xnnpack_graph(torch.fx.symbolic_trace(M()))
    Traceback (most recent call last):
    ...
    lowering.executorch_checks.XnnpackLoweringError: node 'quantize_per_tensor_default' quantizes to torch.uint8, but XNNPACK's quantized kernels take torch.int8 only (uint8 is rejected when the .pte is loaded); quantize with an int8 spec, e.g. quantizers.get_symmetric_quantization_config()
    """
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in CHOOSE_QPARAMS_OPS or node.target in _QDQ_OPS:
            dtype = _dtype(node)
            if dtype is not None and dtype != torch.int8:
                raise XnnpackLoweringError(
                    f"{_where(node)} quantizes to {dtype}, but XNNPACK's quantized kernels take "
                    f"torch.int8 only ({_dtype_consequence(dtype)}); quantize with an int8 spec, "
                    "e.g. quantizers.get_symmetric_quantization_config()"
                )
        if node.target in _QDQ_OPS and _is_weight_qdq(node):
            zp = _zero_points(gm, node)
            if zp is not None and bool((zp != 0).any()):
                kind = "per-channel" if node.target in PER_CHANNEL_OPS else "per-tensor"
                consequence = (
                    "XNNPACK would ignore the zero points and compute wrong outputs"
                    if kind == "per-channel"
                    else "XNNPACK rejects it when the .pte is loaded"
                )
                raise XnnpackLoweringError(
                    f"{_where(node)} quantizes a weight {kind} with non-zero zero point(s) "
                    f"(asymmetric); {consequence}. Use a symmetric weight spec "
                    "(qscheme torch.per_tensor_symmetric or torch.per_channel_symmetric)"
                )


def _dtype_consequence(dtype: torch.dtype) -> str:
    if dtype == torch.uint8:
        return "uint8 is rejected when the .pte is loaded"
    return f"{dtype} fails inside ExecuTorch's partitioner"


class UntieSharedBiasPass(PassBase):
    """Give every linear/conv its own copy of a float bias constant it shares with another.

    Before::

        bias = get_attr[fc.bias]
        l1 = linear(x_dq, w1_dq, bias); l2 = linear(y_dq, w2_dq, bias)

    After::

        l1 = linear(x_dq, w1_dq, bias); l2 = linear(y_dq, w2_dq, bias_use1)

    >>> import torch
    >>> class Twice(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.fc(self.fc(x))
    >>> gm = torch.export.export(Twice(), (torch.randn(1, 2),)).module()
    >>> UntieSharedBiasPass()(gm).modified
    True
    >>> sorted(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
    ['fc.bias', 'fc.weight', 'fc_bias_use1']
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        gm = graph_module
        modified = False
        for node in list(gm.graph.nodes):
            tensor = _const(gm, node)
            if tensor is None:
                continue
            uses = [
                u for u in node.users
                if u.op == "call_function" and u.target in XNNPACK_WEIGHTED_OPS
                and len(u.args) > 2 and u.args[2] is node
            ]
            for i, user in enumerate(uses[1:], start=1):
                name = register_constant(gm, f"{node.target}_use{i}", tensor.detach().clone())
                with gm.graph.inserting_before(user):
                    copy = gm.graph.get_attr(name)
                copy_meta(copy, node, value=True)
                user.replace_input_with(node, copy)
                modified = True
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)


class DropUnusedConstantsPass(PassBase):
    """Delete parameters and buffers no ``get_attr`` node reads.

    ``convert_pt2e`` already drops what its graph stops reading
    (:func:`pt2e.fold.drop_unused_attributes`, which this pass runs). It still
    matters for a graph that reaches :func:`lowering.to_executorch` another way:
    converted by another flow, edited by hand, or carrying buffers the model
    registers but never reads. ``torch.export`` lifts every parameter and buffer,
    read or not, and ExecuTorch serializes each into the ``.pte`` (measured: an
    unread 100,000-float buffer grows a linear's 2 KB ``.pte`` to 400 KB).

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
    >>> gm.register_buffer("stale", torch.zeros(1000))
    >>> DropUnusedConstantsPass()(gm).modified, hasattr(gm, "stale")
    (True, False)
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        return PassResult(graph_module, drop_unused_attributes(graph_module) > 0)
