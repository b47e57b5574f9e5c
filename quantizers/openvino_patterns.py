"""The OpenVINO pattern tables and their annotators.

OpenVINO's frontend turns each ``quantize -> dequantize`` pair into a FakeQuantize
and its low-precision transformations run a convolution, fully-connected layer or
matmul in int8 when *its inputs* carry FakeQuantizes; the output is re-quantized by
whichever consumer wants int8. So every row here quantizes inputs, never outputs:

* ``conv`` / ``linear``: the activation input (per tensor) and the weight (int8
  per output channel, symmetric); the bias stays float (OpenVINO folds it);
* ``matmul``: both inputs (attention scores, attention x values), symmetric in every
  mode and the second one signed: with an asymmetric (``uint8``, zero point != 0)
  operand OpenVINO's CPU plugin runs the matmul (or its fused attention) in f32;
* ``add`` (``INT8_SYM`` / ``INT8_MIXED`` only): both inputs, as NNCF's CPU
  configuration quantizes eltwise adds; ``INT8_TRANSFORMER`` leaves the residual
  stream float;
* weight-only tables: the weight of each conv / linear, nothing else.

Two facts decide one input's quantizer:

* **where it sits**: it propagates up through quantization-agnostic ops (max/avg
  pool, reshape, view, flatten, transpose, permute, squeeze, unsqueeze) to the first
  op that computes, and those ops share its qparams (one quantizer, as OpenVINO
  expects: ``relu -> q/dq -> maxpool -> q/dq -> flatten -> q/dq -> linear`` with
  one scale). ``cat`` takes one sharing group over all its inputs;
* **its sign**: an input known to be non-negative (the output of relu, relu6,
  sigmoid, softmax, or of agnostic ops over one) gets ``uint8`` ``0..255`` with zero
  point 0 even in the symmetric mode, instead of a signed range that wastes half
  of its levels (see :mod:`quantizers.openvino`).

``relu`` is not an agnostic op here: it is where the unsigned range starts (NNCF
also places the quantizer after the relu, which OpenVINO fuses into the conv).

>>> [p.name for p in OPENVINO_PATTERNS]
['conv', 'linear', 'matmul', 'add']
>>> [p.name for p in OPENVINO_TRANSFORMER_PATTERNS], [p.name for p in OPENVINO_WEIGHT_ONLY_PATTERNS]
(['conv', 'linear', 'matmul'], ['conv_weight', 'linear_weight'])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch.fx import Node

from pt2e.quantizer import (
    QuantizationConfig,
    QuantizationSpec,
    SharedQuantizationSpec,
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_input_act_qspec,
    get_weight_qspec,
    is_annotated,
    mark_annotated,
)

from .annotators import AnnotationContext
from .patterns import (
    ADD_OPS,
    CAT_OPS,
    CONV_OPS,
    LINEAR_OPS,
    MATMUL_OPS,
    POOL_OPS,
    RELU_OPS,
    RESHAPE_OPS,
    Match,
    PatternTable,
    is_tensor_node,
    weighted_op_parts,
)

__all__ = [
    "OPENVINO_PATTERNS",
    "OPENVINO_TRANSFORMER_PATTERNS",
    "OPENVINO_WEIGHT_ONLY_PATTERNS",
    "AGNOSTIC_OPS",
    "NON_NEGATIVE_OPS",
    "is_non_negative",
    "unsigned_spec",
    "signed_symmetric_spec",
]

aten = torch.ops.aten

#: ops that move values without computing new ones: a quantizer passes through them
AGNOSTIC_OPS = POOL_OPS | RESHAPE_OPS | frozenset({
    aten.transpose.int, aten.permute.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.unsqueeze.default, aten.contiguous.default, aten.clone.default,
})
#: ops whose output is never negative
NON_NEGATIVE_OPS = RELU_OPS | frozenset({
    aten.sigmoid.default, aten.softmax.int, aten._softmax.default, aten.abs.default,
})
_HARDTANH = frozenset({aten.hardtanh.default, aten.hardtanh_.default})


def is_non_negative(node: object, _depth: int = 0) -> bool:
    """Whether ``node``'s output is known to be ``>= 0`` (relu & co., through agnostic ops and cat).

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Flatten())
    >>> gm = torch.export.export(m, (torch.randn(1, 2),)).module()
    >>> {n.name: is_non_negative(n) for n in gm.graph.nodes if n.op == "call_function"}
    {'linear': False, 'relu': True, 'flatten': True}
    """
    if not isinstance(node, Node) or node.op != "call_function" or _depth > 64:
        return False
    if node.target in NON_NEGATIVE_OPS:
        return True
    if node.target in _HARDTANH:  # relu6 exports as hardtanh(x, 0, 6)
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        return isinstance(low, (int, float)) and low >= 0
    if node.target in CAT_OPS:
        inputs = node.args[0]
        return isinstance(inputs, (list, tuple)) and all(is_non_negative(i, _depth + 1) for i in inputs)
    if node.target in AGNOSTIC_OPS:
        return is_non_negative(node.args[0], _depth + 1)
    return False


@functools.lru_cache
def unsigned_spec(spec: QuantizationSpec) -> QuantizationSpec:
    """The unsigned twin of an activation spec: ``uint8`` ``0..255`` affine (zero point 0 on ``x >= 0``).

    Observers always include 0 in the range, so a non-negative tensor gets zero
    point 0 and all 256 levels for its values.

    >>> from quantizers.openvino import get_openvino_quantization_config
    >>> s = unsigned_spec(get_openvino_quantization_config("int8_sym").input_activation)
    >>> s.dtype, s.quant_min, s.quant_max, s.qscheme
    (torch.uint8, 0, 255, torch.per_tensor_affine)
    """
    return dataclasses.replace(spec, dtype=torch.uint8, quant_min=0, quant_max=255,
                               qscheme=torch.per_tensor_affine)


@functools.lru_cache
def signed_symmetric_spec(spec: QuantizationSpec) -> QuantizationSpec:
    """The ``int8`` ``-128..127`` symmetric twin of an activation spec (a matmul's second input).

    OpenVINO runs a matmul in int8 only when its second operand, like a weight, is
    signed with zero point 0; with ``uint8`` affine there it runs the matmul in f32.

    >>> from quantizers.openvino import get_openvino_quantization_config
    >>> s = signed_symmetric_spec(get_openvino_quantization_config("int8_mixed").input_activation)
    >>> s.dtype, s.qscheme
    (torch.int8, torch.per_tensor_symmetric)
    """
    return dataclasses.replace(spec, dtype=torch.int8, quant_min=-128, quant_max=127,
                               qscheme=torch.per_tensor_symmetric)


def _spec_for(
    source: Node, config: QuantizationConfig, *, signed: bool = False, symmetric: bool = False
) -> QuantizationSpec | None:
    act = get_input_act_qspec(config)
    if act is None:
        return None
    if is_non_negative(source) and not signed:
        return unsigned_spec(act)  # zero point 0: symmetric as well
    return signed_symmetric_spec(act) if signed or symmetric else act


def _walk_up(arg: Node) -> list[Node]:
    """The agnostic single-user ops above ``arg`` (``arg`` first), stopping at a claimed node."""
    chain: list[Node] = []
    cur = arg
    while (cur.op == "call_function" and cur.target in AGNOSTIC_OPS and len(cur.users) == 1
           and not is_annotated(cur) and isinstance(cur.args[0], Node) and is_tensor_node(cur.args[0])):
        chain.append(cur)
        cur = cur.args[0]
    return chain


def _quantize_cat(cat: Node, config: QuantizationConfig, signed: bool, symmetric: bool) -> bool:
    args = cat.args[0]
    if is_annotated(cat) or not isinstance(args, (list, tuple)) or not args:
        return False
    inputs = [i for i in args if isinstance(i, Node) and is_tensor_node(i)]
    if len(inputs) != len(args):
        return False
    spec = _spec_for(cat, config, signed=signed, symmetric=symmetric)
    if spec is None:
        return False
    first = inputs[0]
    annotate_input_qspec_map(cat, first, spec)
    shared = SharedQuantizationSpec((first, cat))
    for other in inputs[1:]:
        if other is not first:
            annotate_input_qspec_map(cat, other, shared)
    annotate_output_qspec(cat, shared)
    mark_annotated([cat])
    return True


def quantize_input(
    consumer: Node, arg: Node, config: QuantizationConfig, *, signed: bool = False, symmetric: bool = False
) -> None:
    """Quantize the activation ``arg`` of ``consumer``, placed above the agnostic ops before it.

    Without agnostic ops the edge ``arg -> consumer`` is observed. Otherwise the
    edge into the topmost agnostic op is, and every agnostic op on the way down
    shares it; ``consumer`` then reads the last one's quantized output. A ``cat``
    (with no other user) above them takes one group over all its inputs instead.
    ``signed=True`` forces the signed symmetric spec (:func:`signed_symmetric_spec`);
    ``symmetric=True`` uses it unless the input is non-negative (then ``uint8``, zero point 0).
    """
    chain = _walk_up(arg)
    top_input = chain[-1].args[0] if chain else arg
    if not isinstance(top_input, Node):  # _walk_up only climbs through node inputs
        return
    source = top_input
    if (source.op == "call_function" and source.target in CAT_OPS and len(source.users) == 1
            and _quantize_cat(source, config, signed, symmetric)):
        for node in chain:
            annotate_output_qspec(node, SharedQuantizationSpec(source))
            mark_annotated([node])
        return
    spec = _spec_for(source, config, signed=signed, symmetric=symmetric)
    if spec is None:
        return
    if not chain:
        annotate_input_qspec_map(consumer, arg, spec)
        return
    top = chain[-1]
    annotate_input_qspec_map(top, source, spec)
    for node in chain:
        annotate_output_qspec(node, SharedQuantizationSpec((source, top)))
        mark_annotated([node])


def _activation(arg: object) -> bool:
    return isinstance(arg, Node) and is_tensor_node(arg) and arg.op != "get_attr"


# --- the static tables ---------------------------------------------------------------------------
# Priority only orders the rows (no row's nodes overlap another's): weighted ops first.

OPENVINO_PATTERNS = PatternTable()


@OPENVINO_PATTERNS.register(name="conv", anchor=CONV_OPS, priority=40)
@OPENVINO_PATTERNS.register(name="linear", anchor=LINEAR_OPS, priority=30)
def _annotate_weighted(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    node = match.anchor
    x, w, _bias = weighted_op_parts(node)
    if get_input_act_qspec(config) is not None and _activation(x):
        quantize_input(node, x, config)
    weight = get_weight_qspec(config)
    if weight is not None:
        annotate_input_qspec_map(node, w, weight)
    mark_annotated([node])
    ctx.quantized_outputs.add(node)


@OPENVINO_PATTERNS.register(name="matmul", anchor=MATMUL_OPS, priority=20)
def _annotate_matmul(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    node = match.anchor
    for i, arg in enumerate(node.args[:2]):
        if isinstance(arg, Node) and is_tensor_node(arg):
            quantize_input(node, arg, config, signed=i == 1, symmetric=True)
    mark_annotated([node])
    ctx.quantized_outputs.add(node)


@OPENVINO_PATTERNS.register(name="add", anchor=ADD_OPS, priority=10)
def _annotate_add(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    node = match.anchor
    a, b = (tuple(node.args) + (None, None))[:2]
    if not (isinstance(a, Node) and isinstance(b, Node) and _activation(a) and _activation(b)):
        return  # a bias or scalar add: OpenVINO folds it into the producer
    if a.meta["val"].shape != b.meta["val"].shape:
        return
    for arg in (a, b):
        quantize_input(node, arg, config)
    mark_annotated([node])


def _drop(*names: str) -> Any:
    def change(row: Any) -> Any:
        return None if row.name in names else row

    return change


#: INT8_TRANSFORMER: no eltwise add rows, so the residual stream stays float
OPENVINO_TRANSFORMER_PATTERNS = OPENVINO_PATTERNS.derive(_drop("add"))

# --- weight-only ---------------------------------------------------------------------------------

OPENVINO_WEIGHT_ONLY_PATTERNS = PatternTable()


@OPENVINO_WEIGHT_ONLY_PATTERNS.register(name="conv_weight", anchor=CONV_OPS, priority=40)
@OPENVINO_WEIGHT_ONLY_PATTERNS.register(name="linear_weight", anchor=LINEAR_OPS, priority=30)
def _annotate_weight_only(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    node = match.anchor
    _x, w, _bias = weighted_op_parts(node)
    # read directly: get_weight_qspec refuses affine weights, which the *_ASYM modes are
    weight = config.weight
    if weight is not None:
        annotate_input_qspec_map(node, w, weight)
    mark_annotated([node])
