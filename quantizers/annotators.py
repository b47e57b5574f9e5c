"""Backend-independent annotators: what to quantize around one matched pattern.

Each function writes annotations only through :mod:`pt2e.quantizer`'s accessors.
An :class:`AnnotationContext` travels through one ``annotate`` call; it remembers
which nodes end a quantized pattern (so ops that merely move int8 data, such as
pooling, ``cat`` and reshapes, are quantized only when their input already is)
and :func:`unquantized_compute_ops` lists the compute ops that stay float as
:class:`~pt2e.report.OpRecord` s.

>>> import torch
>>> from observers import MinMaxObserver
>>> from pt2e.quantizer import QuantizationConfig, QuantizationSpec, get_annotation
>>> act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
...                        qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
>>> cfg = QuantizationConfig(act, act, None, None)
>>> gm = torch.export.export(torch.nn.MaxPool2d(2), (torch.randn(1, 1, 4, 4),)).module()
>>> pool = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.max_pool2d.default)
>>> ctx = AnnotationContext(quantized_outputs={pool.args[0]})
>>> annotate_shared_qparams_op(pool, cfg, ctx)
True
>>> type(get_annotation(pool).output_qspec).__name__
'SharedQuantizationSpec'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch.fx import Graph, Node

from pt2e.graph import module_path
from pt2e.quantizer import (
    QuantizationConfig,
    SharedQuantizationSpec,
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_annotation,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    is_annotated,
    mark_annotated,
)
from pt2e.quantizer.annotation import get_or_create_annotation
from pt2e.report import OpRecord

from .patterns import (
    CAT_OPS,
    COMPUTE_OPS,
    RESHAPE_OPS,
    Match,
    is_tensor_node,
    other_binary_input,
    weighted_op_parts,
)

__all__ = [
    "AnnotationContext",
    "annotate_weighted_op",
    "annotate_weighted_pattern",
    "annotate_all_tensor_inputs",
    "annotate_shared_qparams_op",
    "has_quantized_output",
    "mark_not_quantized",
    "mark_quantized_pattern_output",
    "is_quantized_node",
    "unquantized_compute_ops",
]


@dataclass
class AnnotationContext:
    """State shared by the annotators during one ``Quantizer.annotate`` call."""

    quantized_outputs: set[Node] = field(default_factory=set)
    """Nodes that end a quantized pattern; their consumers may stay in int8."""


def annotate_weighted_op(node: Node, config: QuantizationConfig) -> None:
    """Quantize a conv/linear node's input (activation spec), weight and bias edges.

    The output is left alone: it is quantized by whichever consumer wants an int8
    input, which lets the backend fuse ``conv -> relu -> quantize`` into one kernel.
    """
    x, w, b = weighted_op_parts(node)
    act = get_input_act_qspec(config)
    if act is not None:
        annotate_input_qspec_map(node, x, act)
    weight = get_weight_qspec(config)
    if weight is not None:
        annotate_input_qspec_map(node, w, weight)
    bias = get_bias_qspec(config)
    if b is not None and bias is not None:
        annotate_input_qspec_map(node, b, bias)


def annotate_weighted_pattern(
    match: Match,
    config: QuantizationConfig,
    ctx: AnnotationContext,
    *,
    quantize_binary_input: bool,
    annotate_output: bool = False,
) -> None:
    """Annotate ``conv/linear [-> bn] [-> add] [-> unary]`` as one fused pattern.

    ``quantize_binary_input``: quantize the add's other operand (oneDNN then sums
    in int8; x86 does so for conv, not for linear, for accuracy).
    ``annotate_output``: also quantize the pattern's last output (QAT keeps the
    batch norm in the graph and wants the observer after it).
    """
    anchor = match.anchor
    annotate_weighted_op(anchor, config)
    binary = match.roles.get("binary")
    if binary is not None and quantize_binary_input:
        act = get_input_act_qspec(config)
        prev = match.nodes[match.nodes.index(binary) - 1]
        other = other_binary_input(binary, prev)
        if act is not None and other is not None:
            annotate_input_qspec_map(binary, other, act)
    if annotate_output:
        annotate_output_qspec(match.last, get_output_act_qspec(config))
    mark_annotated(match.nodes)
    ctx.quantized_outputs.add(match.last)


def annotate_all_tensor_inputs(node: Node, config: QuantizationConfig, ctx: AnnotationContext) -> bool:
    """Quantize every tensor input of ``node`` with the activation spec (matmul, mul).

    Returns ``False`` (and annotates nothing) if the config quantizes no activations.
    """
    act = get_input_act_qspec(config)
    if act is None:
        return False
    for arg in node.args:
        if isinstance(arg, Node) and is_tensor_node(arg):
            annotate_input_qspec_map(node, arg, act)
    mark_annotated([node])
    ctx.quantized_outputs.add(node)
    return True


def has_quantized_output(node: object) -> bool:
    """Whether ``node`` is claimed and its output carries a quantization spec."""
    ann = get_annotation(node) if isinstance(node, Node) else None
    return bool(isinstance(node, Node) and is_annotated(node)
                and getattr(ann, "output_qspec", None) is not None)


def annotate_shared_qparams_op(
    node: Node,
    config: QuantizationConfig | None,
    ctx: AnnotationContext,
    *,
    share_producer: bool = False,
    int8_consumers: frozenset | None = None,
) -> bool:
    """Keep an int8-preserving op (pool, ``cat``, reshape, clamp) in int8 when its input already is.

    The one mechanism for ops that reuse their input's qparams. Input and output
    land in one sharing group, so they carry identical qparams and the backend runs
    the op on int8 data (``dequantize -> maxpool -> quantize`` becomes an int8 maxpool).
    Two ways to know "the input already is int8":

    * ``share_producer=False`` (x86): the input ends a fused pattern in this
      annotation (``ctx.quantized_outputs``), whose output the consumer quantizes; the
      first input edge is observed with ``config``'s activation spec;
    * ``share_producer=True`` (XNNPACK, run as a ``propagate`` row, ``config`` unused):
      the producer's output is already annotated; the input edge shares it.

    Every other input (``cat``) and the output share that first edge. Reshape-type
    ops are claimed only when one of their users is in ``int8_consumers`` (or they
    have no user), otherwise a float op would pay for a useless quantize/dequantize
    pair. Returns whether ``node`` was annotated.
    """
    if is_annotated(node):
        return False
    inputs = node.args[0] if node.target in CAT_OPS else [node.args[0]]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return False
    first = inputs[0]
    if not isinstance(first, Node):
        return False
    in_spec: Any
    if share_producer:
        if not all(has_quantized_output(i) for i in inputs):
            return False
        in_spec = SharedQuantizationSpec(first)
    else:
        in_spec = get_input_act_qspec(config)
        if in_spec is None or not all(isinstance(i, Node) and i in ctx.quantized_outputs for i in inputs):
            return False
    if node.target in RESHAPE_OPS and node.users and int8_consumers is not None:
        if not any(u.target in int8_consumers for u in node.users):
            return False
    annotate_input_qspec_map(node, first, in_spec)
    shared = SharedQuantizationSpec((first, node))
    for other in inputs[1:]:
        if other is not first and isinstance(other, Node):
            annotate_input_qspec_map(node, other, shared)
    annotate_output_qspec(node, shared)
    mark_annotated([node])
    ctx.quantized_outputs.add(node)
    return True


def mark_quantized_pattern_output(node: Node) -> None:
    """Flag ``node`` as the output of a quantized fusion pattern, as torchao's X86 quantizer does.

    Sets the annotation's ``_is_output_of_quantized_pattern`` (torchao's field,
    read by code written against torchao); prepare and convert ignore it.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> relu = list(gm.graph.nodes)[1]
    >>> mark_quantized_pattern_output(relu)
    >>> get_annotation(relu)._is_output_of_quantized_pattern
    True
    """
    get_or_create_annotation(node)._is_output_of_quantized_pattern = True


def mark_not_quantized(nodes: Iterable[Node]) -> None:
    """Claim ``nodes`` without quantizing them (a ``None`` config), so later stages skip them."""
    mark_annotated(nodes)


def is_quantized_node(node: Node) -> bool:
    """Whether ``node`` has at least one quantized input edge."""
    ann = get_annotation(node)
    qmap = getattr(ann, "input_qspec_map", None) or {}
    return any(spec is not None for spec in qmap.values())


def _reason(node: Node, hints: dict, backend_reasons: dict[Node, str]) -> str:
    if node in backend_reasons:
        return backend_reasons[node]
    if is_annotated(node):
        return "excluded by a None quantization config"
    for ops, hint in hints.items():
        if node.target in ops:
            return hint
    if not node.users:
        return "output unused (dead code)"
    return "no quantization pattern for this operator"


def unquantized_compute_ops(
    graph: Graph,
    hints: dict[frozenset, str] | None = None,
    backend_reasons: dict[Node, str] | None = None,
) -> list[OpRecord]:
    """Compute-heavy ops (conv, linear, matmul, attention...) that no annotation quantized.

    ``backend_reasons`` gives the backend's reason for single nodes it refused;
    ``hints`` maps op sets to the reason a backend gives for them (e.g. "matmuls
    are opt-in"); otherwise a generic reason is given.
    """
    out = []
    for n in graph.nodes:
        if n.op == "call_function" and n.target in COMPUTE_OPS and not is_quantized_node(n):
            out.append(OpRecord(
                node=n.name, op=str(n.target), precision="float", module=module_path(n),
                reason=_reason(n, hints or {}, backend_reasons or {}),
            ))
    return out
