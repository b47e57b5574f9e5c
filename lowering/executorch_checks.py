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
SQNR on a linear applied twice). ``convert_pt2e`` already does this
(:mod:`pt2e.untie`); the pass stays as a guard for graphs converted elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from pt2e.errors import Pt2eError
from pt2e.fold import drop_unused_attributes
from pt2e.graph import attr_value, batch_norm_args, copy_meta, module_path, register_constant
from pt2e.ops import (
    BATCH_NORM_OPS,
    CHOOSE_QPARAMS_OPS,
    CONV_OPS,
    CONV_TRANSPOSE_OPS,
    DEQUANTIZE_OPS,
    LINEAR_OPS,
    PER_CHANNEL_OPS,
    QUANTIZE_OPS,
    is_dequantize,
)
from pt2e.untie import untie_shared_bias

__all__ = [
    "XnnpackLoweringError",
    "check_xnnpack_graph",
    "UntieSharedBiasPass",
    "SharedOutputPass",
    "DropUnusedConstantsPass",
    "FloatScalarOperandsPass",
    "BatchNormToAffinePass",
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


def _quant_range(node: Node) -> tuple[int, int] | None:
    """``(quant_min, quant_max)`` of a q/dq node: the two integers in front of its dtype."""
    i = next((i for i, a in enumerate(node.args) if isinstance(a, torch.dtype)), None)
    if i is None or i < 2:
        return None
    lo, hi = node.args[i - 2], node.args[i - 1]
    return (lo, hi) if isinstance(lo, int) and isinstance(hi, int) else None


def _where(node: Node) -> str:
    # a weight's q/dq has no module of its own: name the module of the layer that reads it
    module = module_path(node) or next(filter(None, (module_path(u) for u in node.users)), "")
    return f"node '{node.name}'" + (f" (module {module})" if module else "")


def check_xnnpack_graph(gm: GraphModule) -> None:
    """Raise :class:`XnnpackLoweringError` for quantization XNNPACK cannot run correctly.

    Checked: every quantize/dequantize uses ``torch.int8`` (XNNPACK has no uint8
    or int16 path here: uint8 fails when the ``.pte`` loads, int16 inside the
    partitioner with an unrelated message); weights are symmetric (zero point 0) with a
    symmetric range or -8..7 (an unsigned range such as 0..15 would clamp every
    negative weight to 0).

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
            qrange = _quant_range(node)
            if qrange is not None and qrange[0] != -qrange[1] and qrange != (-8, 7):
                consequence = (
                    "XNNPACK has no unsigned weight kernel, and as int8 with zero point 0 every "
                    "negative weight is clamped to 0"
                    if qrange[0] >= 0 else "XNNPACK rejects such weights when the .pte is loaded"
                )
                raise XnnpackLoweringError(
                    f"{_where(node)} quantizes a weight to the range {qrange[0]}..{qrange[1]} "
                    f"(get_symmetric_quantization_config(weight_qmin={qrange[0]}, "
                    f"weight_qmax={qrange[1]})); {consequence}. Use weight_qmin=-8, weight_qmax=7 "
                    "with is_per_channel=True for 4-bit weights, or the default -127..127"
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
        # convert_pt2e already unties (pt2e.untie); this guard covers graphs converted elsewhere
        return PassResult(graph_module, untie_shared_bias(graph_module, XNNPACK_WEIGHTED_OPS) > 0)


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


# layout ops whose output ExecuTorch's edge dialect makes contiguous with a clone before a view
_OUTPUT_LAYOUT_OPS = frozenset({aten.permute.default, aten.transpose.int, aten.t.default})


class SharedOutputPass(PassBase):
    """Give each graph output that reads a dequantize or a permute shared with other ops
    its own copy of that node.

    ExecuTorch's XNNPACK flow fails on two such graphs (both found by the fuzzer,
    tests/fuzz; ExecuTorch's stock flow and torchao's fail the same way):

    * a **dequantize** that feeds the graph output and another op:
      ``convert_pt2e`` gives every annotated consumer of a shared dequantize its
      own, but not the graph's output, and XNNPACK's runtime then fails, static or
      dynamic shapes alike ("Propagating input shapes failed",
      ``xnn_status_invalid_parameter``) on ``t = conv(x); return conv2(avg_pool(t)), t``;
    * a **permute or transpose** that is a graph output and is also flattened or
      reshaped, with a dynamic batch: the edge dialect makes it contiguous with a
      clone, the delegate drops the clone and returns the permute twice, and
      preprocess refuses it ("Output node 'aten_permute_copy_default' is already in
      the inputs ... pass through arguments"), float models too.

    Numerics are unchanged: the copy computes the same dequantize or view.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class Shared(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.1, 0, -128, 127, torch.int8)
    ...         t = qd.dequantize_per_tensor.default(q, 0.1, 0, -128, 127, torch.int8)
    ...         h = torch.relu(t).permute(1, 0)
    ...         return t, h, h.flatten()
    >>> gm = torch.export.export(Shared(), (torch.randn(2, 3),)).module()
    >>> SharedOutputPass()(gm).modified
    True
    >>> sum(n.target == qd.dequantize_per_tensor.default for n in gm.graph.nodes)
    2
    >>> sum(n.target == torch.ops.aten.permute.default for n in gm.graph.nodes)
    2
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        graph = graph_module.graph
        output = next(n for n in graph.nodes if n.op == "output")
        made = 0
        for node in list(output.all_input_nodes):
            if not (is_dequantize(node) or node.target in _OUTPUT_LAYOUT_OPS) or len(node.users) < 2:
                continue
            with graph.inserting_after(node):
                copy = graph.node_copy(node)
            copy_meta(copy, node)
            output.replace_input_with(node, copy)
            made += 1
        if made:
            graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, made > 0)


# float arithmetic whose Python-number operand ExecuTorch's edge dialect turns into a tensor
_SCALAR_OPERAND_OPS = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})


class FloatScalarOperandsPass(PassBase):
    """Give float arithmetic float32 constants instead of Python numbers, and spell
    ``hardsigmoid`` as ``clamp(x + 3, 0, 6) / 6`` over such constants.

    ExecuTorch's edge dialect turns a Python ``int`` operand (``x / 6``, and the
    ``+ 3`` and ``/ 6`` of its own ``hardsigmoid`` decomposition) into an int64
    constant plus a ``_to_dim_order_copy`` to float32, a cast XNNPACK refuses
    ("invalid dtype"): each such copy runs outside the delegate on every call
    (measured: 18 on a MobileNetV3, two per squeeze-excite block). Float32
    constants need no cast. Numerics are unchanged (same values, same ops).

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.nn.functional.hardsigmoid(x) / 2
    >>> gm = torch.export.export(M(), (torch.randn(4),)).module()
    >>> x = torch.randn(4)
    >>> before = gm(x)
    >>> FloatScalarOperandsPass()(gm).modified
    True
    >>> [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    ['aten.add.Tensor', 'aten.clamp.default', 'aten.div.Tensor', 'aten.div.Tensor']
    >>> torch.equal(gm(x), before)
    True
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        gm = graph_module
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
                continue
            if node.target == aten.hardsigmoid.default and not node.kwargs:
                self._decompose_hardsigmoid(gm, node)
                modified = True
            elif node.target in _SCALAR_OPERAND_OPS and not node.kwargs:
                args = list(node.args)
                for i, a in enumerate(args[:2]):
                    if isinstance(a, (int, float)) and not isinstance(a, bool):
                        args[i] = _float_constant(gm, node, float(a))
                        modified = True
                node.args = tuple(args)
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)

    @staticmethod
    def _decompose_hardsigmoid(gm: GraphModule, node: Node) -> None:
        graph = gm.graph
        three, six = _float_constant(gm, node, 3.0), _float_constant(gm, node, 6.0)
        with graph.inserting_before(node):
            shifted = graph.call_function(aten.add.Tensor, (node.args[0], three))
            clamped = graph.call_function(aten.clamp.default, (shifted, 0.0, 6.0))
            out = graph.call_function(aten.div.Tensor, (clamped, six))
        for new in (shifted, clamped, out):
            copy_meta(new, node, value=True)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _float_constant(gm: GraphModule, before: Node, value: float) -> Node:
    name = register_constant(gm, "_scalar", torch.tensor(value, dtype=torch.float32), numbered=True)
    with gm.graph.inserting_before(before):
        attr = gm.graph.get_attr(name)
    return attr


class BatchNormToAffinePass(PassBase):
    """Spell an eval-mode batch norm on a 2-D or 3-D input as ``x * scale + shift``.

    A batch norm that folding left standing (after a pool, an add...) on a
    ``(N, C)`` or ``(N, C, L)`` input passes XNNPACK's partitioner, which then
    builds it as a 2-D depthwise convolution that XNNPACK refuses when the ``.pte``
    loads ("Failed to create depthwise convolution node"): the whole program cannot
    run. ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean *
    scale`` are constants, so the result equals the batch norm up to float rounding.
    A 4-D batch norm (XNNPACK runs it) is left alone, unless it reads another batch
    norm: ExecuTorch's ``DecomposeBatchNorm`` fails on that chain (``KeyError: 'val'``).

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.MaxPool1d(2), torch.nn.BatchNorm1d(3)).eval()
    >>> x = torch.randn(2, 3, 8)
    >>> gm = torch.export.export(m, (x,)).module()
    >>> BatchNormToAffinePass()(gm).modified
    True
    >>> [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    ['aten.max_pool1d.default', 'aten.mul.Tensor', 'aten.add.Tensor']
    >>> torch.allclose(gm(x), m(x), atol=1e-6)
    True
    """

    def call(self, graph_module: GraphModule) -> PassResult:
        gm = graph_module
        modified = False
        for bn in list(gm.graph.nodes):
            if bn.op != "call_function" or bn.target != aten.batch_norm.default:
                continue
            a = batch_norm_args(bn)
            # the batch norm's own value (its input's shape): a dequantize input may have none
            val = bn.meta.get("val")
            if not isinstance(val, torch.Tensor) and isinstance(a.input, Node):
                val = a.input.meta.get("val")
            rank = val.dim() if isinstance(val, torch.Tensor) else None
            # a 4-D batch norm reading another batch norm fails ExecuTorch's DecomposeBatchNorm
            # (KeyError 'val', float models too; found by the fuzzer): spelled x*s+t as well
            after_bn = isinstance(a.input, Node) and a.input.target in BATCH_NORM_OPS
            if a.training or rank not in (2, 3) and not (rank == 4 and after_bn):
                continue
            consts = [None if n is None else _const(gm, n) for n in (a.weight, a.bias, a.running_mean, a.running_var)]
            weight, bias, mean, var = consts
            if mean is None or var is None or any(
                    n is not None and c is None for n, c in zip((a.weight, a.bias), (weight, bias))):
                continue
            scale = torch.rsqrt(var.float() + a.eps)
            if weight is not None:
                scale = scale * weight.float()
            shift = -mean.float() * scale
            if bias is not None:
                shift = shift + bias.float()
            shape = [-1] + [1] * (rank - 2)
            s_name = register_constant(gm, "_bn_scale", scale.reshape(shape).detach().clone(), numbered=True)
            t_name = register_constant(gm, "_bn_shift", shift.reshape(shape).detach().clone(), numbered=True)
            graph = gm.graph
            with graph.inserting_before(bn):
                s_node, t_node = graph.get_attr(s_name), graph.get_attr(t_name)
                mul = graph.call_function(aten.mul.Tensor, (a.input, s_node))
                add = graph.call_function(aten.add.Tensor, (mul, t_node))
            for n in (mul, add):
                copy_meta(n, bn, value=True)
            bn.replace_all_uses_with(add)
            graph.erase_node(bn)
            modified = True
        if modified:
            gm.graph.eliminate_dead_code()
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)
