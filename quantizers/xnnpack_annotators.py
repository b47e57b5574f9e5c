"""The XNNPACK pattern table: which operator patterns XNNPACK runs in int8, and how to annotate them.

Built on the shared :class:`~quantizers.patterns.PatternTable`: each row is an
anchor operator plus a chain of single-user steps, tried in descending priority
so a fused pattern (``linear -> relu``) claims its nodes before its parts.
Rows marked ``dynamic=True`` also apply to dynamic (runtime-qparams) configs; the
``share_qparams`` row (``propagate=True``) runs after every config stage and lets
layout/clamp/max ops reuse their producer's qparams.

>>> [p.name for p in XNNPACK_PATTERNS][:4]
['conv_bn_relu', 'conv_bn', 'conv_transpose_bn_relu', 'conv_transpose_bn']
>>> [p.name for p in XNNPACK_PATTERNS if p.dynamic]
['linear', 'conv', 'conv_transpose']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.fx import Node

from pt2e import ops
from pt2e.graph import conv_args, get_attr_value
from pt2e.quantizer import (
    QuantizationConfig,
    SharedQuantizationSpec,
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    mark_annotated,
)

from .annotators import (
    AnnotationContext,
    annotate_shared_qparams_op,
    annotate_weighted_pattern,
    has_quantized_output,
)
from .engine import is_dynamic_config
from .patterns import (
    ADD_OPS,
    BATCH_NORM_OPS,
    CAT_OPS,
    CONV_OPS,
    LINEAR_OPS,
    RELU_OPS,
    Match,
    PatternTable,
    Step,
    is_tensor_node,
)

__all__ = [
    "XNNPACK_PATTERNS",
    "CONV_TRANSPOSE_OPS",
    "MUL_OPS",
    "ADAPTIVE_AVG_POOL_OPS",
    "SHARE_QPARAMS_OPS",
    "WEIGHTED_OPS",
    "unsupported_reason",
]

aten = torch.ops.aten

# XNNPACK-specific operator sets (the shared ones come from quantizers.patterns)
CONV_TRANSPOSE_OPS = ops.CONV_TRANSPOSE_OPS - {aten.conv_transpose3d.input}  # XNNPACK: 1-D, 2-D
MUL_OPS = frozenset({aten.mul.Tensor, aten.mul_.Tensor})
ADAPTIVE_AVG_POOL_OPS = frozenset({aten.adaptive_avg_pool2d.default})
XNNPACK_CAT_OPS = CAT_OPS | {aten.concat.default}
WEIGHTED_OPS = LINEAR_OPS | CONV_OPS | CONV_TRANSPOSE_OPS

# Ops whose output is quantized exactly like their input: XNNPACK runs them on the
# int8 values unchanged (layout ops, max-style ops, clamps, means).
SHARE_QPARAMS_OPS = frozenset({
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.max_pool2d.default, aten.mean.default, aten.mean.dim, aten.adaptive_avg_pool2d.default,
    aten.permute.default, aten.permute_copy.default, aten.transpose.int,
    aten.squeeze.dim, aten.squeeze_copy.dim, aten.view.default, aten.view_copy.default,
    aten.reshape.default, aten.flatten.using_ints, aten.slice.Tensor, aten.slice_copy.Tensor,
    aten.dropout.default, aten.dropout_.default,
})

# torch.histc (inside HistogramObserver) breaks above this magnitude
_HISTC_LIMIT = 3.4028235e15

XNNPACK_PATTERNS = PatternTable()
_BN = Step(role="bn", ops=BATCH_NORM_OPS)
_RELU = Step(role="relu", ops=RELU_OPS)


# --------------------------------------------------------------------------- weighted ops


def _weight_shape(node: Node) -> tuple[int, ...] | None:
    val = getattr(node.args[1], "meta", {}).get("val")
    return tuple(val.shape) if val is not None else None


def _is_depthwise(node: Node) -> bool:
    shape, groups = _weight_shape(node), conv_args(node).groups
    if shape is None or groups <= 1:
        return False
    per_group_in = shape[0] // groups if node.target in CONV_TRANSPOSE_OPS else shape[1]
    return per_group_in == 1


def unsupported_reason(node: Node, config: QuantizationConfig) -> str | None:
    """Why XNNPACK cannot run the linear/conv ``node`` quantized with ``config`` (``None``: it can).

    XNNPACK's dynamic int8 kernels cover linear layers and standard (not depthwise)
    2-D convolutions; its per-channel transposed convolution needs ``groups == 1``.
    """
    if is_dynamic_config(config) and node.target not in LINEAR_OPS:
        shape = _weight_shape(node)
        if shape is not None and len(shape) != 4:
            return "XNNPACK's dynamically quantized convolution is 2-D only"
        if _is_depthwise(node):
            return "XNNPACK has no dynamically quantized depthwise convolution"
    if node.target in CONV_TRANSPOSE_OPS and conv_args(node).groups != 1:
        w = get_weight_qspec(config)
        if w is not None and w.qscheme == torch.per_channel_symmetric:
            return "XNNPACK has no per-channel transposed convolution with groups > 1"
    return None


def _transpose_weight_axis(config: QuantizationConfig) -> QuantizationConfig:
    """A transposed conv's weight is ``(in, out/groups, ...)``: its output channels are axis 1."""
    w = config.weight
    if w is None or w.ch_axis == 1:
        return config
    return dataclasses.replace(config, weight=dataclasses.replace(w, ch_axis=1))


# Priority: conv/transposed-conv + batch norm first (QAT keeps batch norm in the graph),
# then each op with its relu before the op alone. Only the plain rows apply to dynamic configs.
@XNNPACK_PATTERNS.register(name="conv_bn_relu", anchor=CONV_OPS, chain=(_BN, _RELU), priority=100)
@XNNPACK_PATTERNS.register(name="conv_bn", anchor=CONV_OPS, chain=(_BN,), priority=95)
@XNNPACK_PATTERNS.register(
    name="conv_transpose_bn_relu", anchor=CONV_TRANSPOSE_OPS, chain=(_BN, _RELU), priority=90)
@XNNPACK_PATTERNS.register(name="conv_transpose_bn", anchor=CONV_TRANSPOSE_OPS, chain=(_BN,), priority=85)
@XNNPACK_PATTERNS.register(name="linear_relu", anchor=LINEAR_OPS, chain=(_RELU,), priority=80)
@XNNPACK_PATTERNS.register(name="linear", anchor=LINEAR_OPS, priority=75, dynamic=True)
@XNNPACK_PATTERNS.register(name="conv_relu", anchor=CONV_OPS, chain=(_RELU,), priority=70)
@XNNPACK_PATTERNS.register(name="conv", anchor=CONV_OPS, priority=65, dynamic=True)
@XNNPACK_PATTERNS.register(
    name="conv_transpose_relu", anchor=CONV_TRANSPOSE_OPS, chain=(_RELU,), priority=60)
@XNNPACK_PATTERNS.register(name="conv_transpose", anchor=CONV_TRANSPOSE_OPS, priority=55, dynamic=True)
def _annotate_weighted(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    anchor = match.anchor
    if unsupported_reason(anchor, config) is not None:
        return  # left float; XNNPACKQuantizer reports it
    if anchor.target in CONV_TRANSPOSE_OPS:
        config = _transpose_weight_axis(config)
    # only the pattern's nodes are claimed, not the weight: a weight shared by two
    # layers (a module applied twice) must stay available to the second one
    annotate_weighted_pattern(match, config, ctx, quantize_binary_input=False, annotate_output=True)


# --------------------------------------------------------------------------- binary ops


def _quantizable_operand(node: Node) -> bool:
    """A float32 tensor an observer can handle (not an int tensor, not a huge scalar)."""
    if not is_tensor_node(node) or node.meta["val"].dtype != torch.float32:
        return False
    t = get_attr_value(node)
    if isinstance(t, torch.Tensor) and t.numel() == 1 and abs(float(t)) > _HISTC_LIMIT:
        return False
    return True


@XNNPACK_PATTERNS.register(name="adaptive_avg_pool2d", anchor=ADAPTIVE_AVG_POOL_OPS, priority=40)
def _annotate_adaptive_avg_pool(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    """Output shares the input's qparams; the input is observed here unless already quantized."""
    pool = match.anchor
    src = pool.args[0]
    if not isinstance(src, Node):
        return
    in_spec = SharedQuantizationSpec(src) if has_quantized_output(src) else get_input_act_qspec(config)
    annotate_input_qspec_map(pool, src, in_spec)
    annotate_output_qspec(pool, SharedQuantizationSpec((src, pool)))
    mark_annotated([pool])
    ctx.quantized_outputs.add(pool)


@XNNPACK_PATTERNS.register(name="add_relu", anchor=ADD_OPS, chain=(_RELU,), priority=35)
@XNNPACK_PATTERNS.register(name="add", anchor=ADD_OPS, priority=30)
@XNNPACK_PATTERNS.register(name="mul_relu", anchor=MUL_OPS, chain=(_RELU,), priority=25)
@XNNPACK_PATTERNS.register(name="mul", anchor=MUL_OPS, priority=20)
def _annotate_binary(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    op = match.anchor
    operands = [a for a in op.args[:2] if isinstance(a, Node)]
    if not all(_quantizable_operand(a) for a in operands):
        return
    for a in operands:
        annotate_input_qspec_map(op, a, get_input_act_qspec(config))
    annotate_output_qspec(match.last, get_output_act_qspec(config))
    mark_annotated(match.nodes)
    ctx.quantized_outputs.add(match.last)


# --------------------------------------------------------------------------- qparam-sharing ops


def _traces_to_quantized_output(node: Any) -> bool:
    """Whether ``node`` (or what it views, through qparam-sharing ops) has a quantized output."""
    seen: set[Node] = set()
    while isinstance(node, Node) and node not in seen:
        seen.add(node)
        if has_quantized_output(node):
            return True
        if node.op != "call_function" or node.target not in SHARE_QPARAMS_OPS:
            return False
        node = node.args[0]
    return False


@XNNPACK_PATTERNS.register(name="cat", anchor=XNNPACK_CAT_OPS, priority=10)
def _annotate_cat(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    """Every input and the output share one observer.

    The observed input is the first that already carries quantized values, so the
    cat reuses an existing scale instead of requantizing it.
    """
    cat = match.anchor
    args: Any = cat.args[0]
    inputs = [a for a in args if isinstance(a, Node)]
    if not inputs:
        return
    source = next((a for a in inputs if _traces_to_quantized_output(a)), inputs[0])
    shared = SharedQuantizationSpec((source, cat))
    annotate_input_qspec_map(cat, source, get_input_act_qspec(config))
    for a in inputs:
        if a is not source:
            annotate_input_qspec_map(cat, a, shared)
    annotate_output_qspec(cat, shared)
    mark_annotated([cat])
    ctx.quantized_outputs.add(cat)


@XNNPACK_PATTERNS.register(name="share_qparams", anchor=SHARE_QPARAMS_OPS, priority=0, propagate=True)
def _annotate_share_qparams(match: Match, config: QuantizationConfig | None, ctx: AnnotationContext) -> None:
    """Layout/clamp/max ops after a quantized output reuse its qparams (chains propagate)."""
    annotate_shared_qparams_op(match.anchor, config, ctx, share_producer=True)
