"""Our ONNX translations of the ``quantized_decomposed`` ops and of an int8 ``linear``.

``torch.onnx.export(..., dynamo=True)`` translates every FX node with a function
from its registry; :func:`translation_table` is passed as its
``custom_translation_table`` and replaces the entries it gets wrong:

* ``quantize_per_tensor`` (all overloads): ONNX ``QuantizeLinear`` saturates to
  the full range of the dtype, PyTorch clamps to ``quant_min..quant_max``. A
  narrower range (reduce_range 0..127, symmetric -127..127, int4-in-int8 -8..7)
  gets an integer ``Clip`` after the quantize, so the numbers stay PyTorch's;
  a ``Clip`` on the integer tensor keeps onnxruntime's QDQ fusion intact, a
  float one in front of the quantize would not.
* ``choose_qparams.tensor`` (dynamic activations) has no translation at all. For
  uint8 0..255 it becomes ``DynamicQuantizeLinear`` (the op onnxruntime fuses into
  ``DynamicQuantizeMatMul``) and the ``.tensor`` quantize reuses its output; for
  any other range or dtype it is spelled out (min/max, PyTorch's formula with
  ``eps``) and the quantize gets the same ``Clip``.
* ``linear`` whose input and weight come from 8-bit ``DequantizeLinear`` (weight a
  constant, per-tensor or per-output-channel, zero point 0): ``MatMulInteger`` ->
  ``Cast`` -> ``Mul(input_scale * weight_scale)`` -> ``Add(bias)``, the pattern
  onnxruntime fuses into ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``. Left
  as QDQ around ``Gemm``/``MatMul``, onnxruntime runs it in float whenever no
  quantize follows (X86's linear, any 3-D input: its MatMul+Add fusion inserts
  reshapes between the dequantize and the Gemm) and for dynamic scales.
* ``conv1d``/``conv2d`` likewise (given a :class:`ConvPlan`): ``ConvInteger`` ->
  ``Cast`` -> ``Mul(input_scale * weight_scale)`` -> ``Add(bias)``, so onnxruntime runs
  an integer kernel where its Conv QDQ rule would not (no quantize after the conv, as in
  X86's conv+add; int8 activations, which its x86 rule refuses). A uint8 conv whose output
  is quantized stays QDQ: onnxruntime fuses that into ``QLinearConv``. onnxruntime's
  ``ConvInteger`` takes int8 or uint8 activations but only a per-tensor weight zero point,
  so a per-channel weight is taken only when its zero points are all 0 (checked on the
  exported program, where the weights are still tensors).

Each function receives onnxscript IR values, so it can look at the node that
produced an input (``value.producer()``): that is how the quantize finds its
``DynamicQuantizeLinear`` and the linear finds its dequantized operands.

>>> sorted(str(k) for k in translation_table())[:2]
['aten.linear.default', 'quantized_decomposed.choose_qparams.tensor']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["translation_table", "DTYPE_RANGES", "narrow_range", "ConvPlan", "conv_plan"]

QD = torch.ops.quantized_decomposed

#: integer dtypes the translations quantize to, and their full ranges
DTYPE_RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-32768, 32767),
    torch.uint16: (0, 65535),
}


def narrow_range(dtype: torch.dtype, quant_min: int, quant_max: int) -> bool:
    """Whether ``quant_min..quant_max`` is narrower than ``dtype``'s range (needs a ``Clip``).

    >>> narrow_range(torch.uint8, 0, 127), narrow_range(torch.int8, -128, 127)
    (True, False)
    """
    lo, hi = DTYPE_RANGES[dtype]
    return (quant_min, quant_max) != (lo, hi)


# --- helpers on onnxscript IR values ---------------------------------------------------------

def _ops() -> Any:
    from onnxscript import opset18

    return opset18


def _ir() -> Any:
    from onnxscript import ir

    return ir


def _torch_dtype(dtype: Any) -> torch.dtype:
    """The exporter passes ``dtype`` arguments as ONNX data type ints; map them back."""
    if isinstance(dtype, torch.dtype):
        return dtype
    ir = _ir()
    np_dtype = ir.DataType(int(dtype)).numpy()
    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8,
            np.dtype(np.int16): torch.int16, np.dtype(np.uint16): torch.uint16}[np.dtype(np_dtype)]


def _onnx_dtype(dtype: torch.dtype) -> Any:
    ir = _ir()
    return {torch.uint8: ir.DataType.UINT8, torch.int8: ir.DataType.INT8,
            torch.int16: ir.DataType.INT16, torch.uint16: ir.DataType.UINT16}[dtype]


def _const(value: Any, dtype: torch.dtype | str) -> Any:
    ir = _ir()
    np_dtype = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
                torch.uint16: np.uint16, "float": np.float32, "int64": np.int64}[dtype]
    return _ops().Constant(value=ir.tensor(np.asarray(value, dtype=np_dtype)))


def _unwrap(value: Any) -> Any | None:
    """The scalar that :func:`choose_qparams` wrapped as PyTorch's ``[1]`` float64/int64."""
    reshape = value.producer() if hasattr(value, "producer") else None
    if reshape is None or reshape.op_type != "Reshape":
        return None
    cast = reshape.inputs[0].producer()
    if cast is None or cast.op_type != "Cast" or "pt2e_qparam" not in cast.meta:
        return None
    return cast.inputs[0]


def _scale_f32(scale: Any) -> Any:
    """A Python float or a float64 tensor scale as a float32 scalar ONNX value."""
    if isinstance(scale, (float, int)):
        return _const(float(scale), "float")
    inner = _unwrap(scale)
    if inner is not None:
        return inner
    op = _ops()
    return op.Reshape(op.Cast(scale, to=_ir().DataType.FLOAT), _const([], "int64"))


def _zero_point(zero_point: Any, dtype: torch.dtype) -> Any:
    if isinstance(zero_point, int):
        return _const(zero_point, dtype)
    inner = _unwrap(zero_point)
    if inner is not None:
        return inner
    op = _ops()
    return op.Reshape(op.Cast(zero_point, to=_onnx_dtype(dtype)), _const([], "int64"))


def _producer(value: Any, op_type: str, *, through: tuple[str, ...] = ("Cast",)) -> Any:
    """The node of type ``op_type`` that produced ``value``, looking through ``through`` ops."""
    node = value.producer() if hasattr(value, "producer") else None
    while node is not None and node.op_type in through and node.op_type != op_type:
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return node if node is not None and node.op_type == op_type else None


def _constant_array(value: Any) -> np.ndarray | None:
    """The numpy value of a constant (an initializer or a ``Constant``/``Cast`` of one)."""
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Constant":
        attr = node.attributes.get("value")
        return None if attr is None else np.asarray(attr.value.numpy())
    if node.op_type == "Cast":
        inner = _constant_array(node.inputs[0])
        return None if inner is None else inner
    return None


def _clip(q: Any, quant_min: int, quant_max: int, dtype: torch.dtype) -> Any:
    if not narrow_range(dtype, quant_min, quant_max):
        return q
    return _ops().Clip(q, _const(quant_min, dtype), _const(quant_max, dtype))


# --- the translations -------------------------------------------------------------------------

def quantize_per_tensor(
    input: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: Any
) -> Any:
    """``clamp(round(x / scale) + zero_point, quant_min, quant_max)``: QuantizeLinear (+ Clip)."""
    dt = _torch_dtype(dtype)
    inner = None if isinstance(scale, float) else _unwrap(scale)
    dql = _producer(inner, "DynamicQuantizeLinear", through=()) if inner is not None else None
    if dql is not None and dql.inputs[0] is input:
        return dql.outputs[0]  # choose_qparams already quantized this tensor
    q = _ops().QuantizeLinear(input, _scale_f32(scale), _zero_point(zero_point, dt))
    return _clip(q, quant_min, quant_max, dt)


def dequantize_per_tensor(
    input: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: Any,
    out_dtype: Any = None,
) -> Any:
    """``(q - zero_point) * scale``: DequantizeLinear (reading DynamicQuantizeLinear's qparams)."""
    dt = _torch_dtype(dtype)
    out = _ops().DequantizeLinear(input, _scale_f32(scale), _zero_point(zero_point, dt))
    if out_dtype not in (None, -1):
        out = _ops().Cast(out, to=int(out_dtype))
    return out


def choose_qparams(input: Any, quant_min: int, quant_max: int, eps: float, dtype: Any) -> Any:
    """Per-tensor affine qparams of ``input`` at run time (PyTorch's ``determine_qparams``)."""
    op, ir = _ops(), _ir()
    dt = _torch_dtype(dtype)
    if dt == torch.uint8 and (quant_min, quant_max) == (0, 255):
        # the same formula without eps (differs only when the range is below 255 * eps)
        _, scale, zero_point = op.DynamicQuantizeLinear(input)
    else:
        zero = _const(0.0, "float")
        lo = op.Min(op.ReduceMin(input, keepdims=0), zero)
        hi = op.Max(op.ReduceMax(input, keepdims=0), zero)
        scale = op.Max(op.Div(op.Sub(hi, lo), _const(float(quant_max - quant_min), "float")),
                       _const(eps, "float"))
        zp = op.Sub(_const(float(quant_min), "float"), op.Round(op.Div(lo, scale)))
        zp = op.Clip(zp, _const(float(quant_min), "float"), _const(float(quant_max), "float"))
        zero_point = op.Cast(zp, to=_onnx_dtype(dt))
    # PyTorch returns a float64 scale and an int64 zero point of shape [1]
    shape = _const([1], "int64")
    wrapped = []
    for value, to in ((scale, ir.DataType.DOUBLE), (zero_point, ir.DataType.INT64)):
        cast = op.Cast(value, to=to)
        cast.producer().meta["pt2e_qparam"] = True  # lets the quantize/dequantize unwrap it
        wrapped.append(op.Reshape(cast, shape))
    return tuple(wrapped)


def _integer_operands(input: Any, weight: Any) -> tuple[Any, ...] | None:
    """``(x_q, x_scale, x_zp, w_q, w_scale, w_zp)`` when ``linear(input, weight)`` can run on
    ``MatMulInteger``: both from 8-bit DequantizeLinear, ``x`` per tensor, ``w`` a 2-D int8
    initializer (the exported program's weights are graph inputs until the exporter
    turns them into initializers) per tensor or per output channel (axis 0)."""
    ir = _ir()
    dq_x = _producer(input, "DequantizeLinear", through=())
    dq_w = _producer(weight, "DequantizeLinear", through=())
    if dq_x is None or dq_w is None or len(dq_w.inputs) < 2:
        return None
    w_q = dq_w.inputs[0]
    if w_q.dtype != ir.DataType.INT8 or w_q.producer() is not None or w_q.shape is None \
            or len(w_q.shape) != 2:
        return None
    if dq_x.inputs[0].dtype not in (ir.DataType.UINT8, ir.DataType.INT8):
        return None
    w_scale = dq_w.inputs[1]
    per_channel = w_scale.shape is not None and len(w_scale.shape) == 1 and w_scale.shape[0] != 1
    axis = dq_w.attributes.get("axis")
    if per_channel and (axis is None or axis.value != 0):
        return None
    x_scale = dq_x.inputs[1]
    if x_scale.shape is not None and len(x_scale.shape) > 0:
        return None  # a per-axis activation: no integer matmul takes it
    x_zp = dq_x.inputs[2] if len(dq_x.inputs) > 2 else None
    w_zp = dq_w.inputs[2] if len(dq_w.inputs) > 2 else None
    return dq_x.inputs[0], x_scale, x_zp, w_q, w_scale, w_zp


def linear(input: Any, weight: Any, bias: Any = None) -> Any:
    """An int8 ``linear`` as ``MatMulInteger`` -> Cast -> Mul -> Add; otherwise torchlib's."""
    operands = _integer_operands(input, weight)
    if operands is None:
        from onnxscript.function_libs.torch_lib.ops.nn import aten_linear

        return aten_linear(input, weight, bias)
    op, ir = _ops(), _ir()
    x_q, x_scale, x_zp, w_q, w_scale, w_zp = operands
    if x_zp is None:
        x_zp = _const(0, torch.uint8 if x_q.dtype == ir.DataType.UINT8 else torch.int8)
    # [out, in] -> [in, out]; constant-folded to an initializer by the exporter or onnxruntime
    w_t = op.Transpose(w_q, perm=[1, 0])
    acc = op.MatMulInteger(x_q, w_t, x_zp, w_zp) if w_zp is not None else op.MatMulInteger(
        x_q, w_t, x_zp)
    # onnxruntime fuses MatMulInteger -> Cast -> Mul(., Mul(x_scale, w_scale)) [-> Add(bias)]
    out = op.Mul(op.Cast(acc, to=ir.DataType.FLOAT), op.Mul(x_scale, w_scale))
    return out if bias is None else op.Add(out, bias)


# --- int8 convolution ---------------------------------------------------------------------------

_CONVS = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)
_RELUS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


@dataclass(frozen=True)
class ConvPlan:
    """Which convs (named by their int8 weight's placeholder in the exported program, the
    name the weight keeps as an ONNX value) the conv translation may put on ``ConvInteger``
    (``integer``: weight zero points per tensor or all 0), and which of those have a quantize
    after them (``quantized_output``: left QDQ for ``QLinearConv`` when the activations are
    uint8)."""

    integer: frozenset[str] = frozenset()
    quantized_output: frozenset[str] = frozenset()


def _all_users_quantize(node: Any) -> bool:
    from pt2e.ops import QUANTIZE_OPS

    users = list(node.users)
    if len(users) == 1 and users[0].target in _RELUS:
        users = list(users[0].users)
    return bool(users) and all(u.target in QUANTIZE_OPS for u in users)


def conv_plan(exported: torch.export.ExportedProgram) -> ConvPlan:
    """The :class:`ConvPlan` of ``exported`` (an ``ExportedProgram`` of a converted model)."""
    from pt2e.ops import DEQUANTIZE_OPS

    sig = exported.graph_signature
    keys = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
            **sig.inputs_to_lifted_tensor_constants}
    tensors = {**exported.state_dict, **exported.constants}

    def zeros(arg: Any) -> bool:
        if isinstance(arg, int):
            return True  # per tensor: ConvInteger takes any scalar zero point
        if getattr(arg, "op", None) != "placeholder" or keys.get(arg.name) not in tensors:
            return False
        value = tensors[keys[arg.name]]
        return isinstance(value, torch.Tensor) and not bool(value.any())

    integer: set[str] = set()
    quantized: set[str] = set()
    for node in exported.graph.nodes:
        if node.target not in _CONVS or len(node.args) < 2:
            continue
        dq_w = node.args[1]
        if getattr(dq_w, "target", None) not in DEQUANTIZE_OPS:
            continue
        w = dq_w.args[0]
        if getattr(w, "op", None) != "placeholder":
            continue
        if dq_w.target == QD.dequantize_per_channel.default:
            if dq_w.args[3] != 0 or not zeros(dq_w.args[2]):
                continue
        elif not isinstance(dq_w.args[2], int):
            continue
        integer.add(w.name)
        if _all_users_quantize(node):
            quantized.add(w.name)
    return ConvPlan(frozenset(integer), frozenset(quantized))


def _ints(value: Any, n: int) -> list[int]:
    if isinstance(value, Iterable):
        out = [int(v) for v in value]
        return out * n if len(out) == 1 else out
    return [int(value)] * n


def _conv_operands(input: Any, weight: Any, plan: ConvPlan) -> tuple[Any, Any] | None:
    """The input's and weight's DequantizeLinear when the conv goes on ``ConvInteger``: an
    8-bit per-tensor input, a planned int8 weight, and not (uint8 input and a quantize after
    it), which onnxruntime already fuses into ``QLinearConv``."""
    ir = _ir()
    dq_x = _producer(input, "DequantizeLinear", through=())
    dq_w = _producer(weight, "DequantizeLinear", through=())
    if dq_x is None or dq_w is None or len(dq_w.inputs) < 2:
        return None
    w_q, x_q, x_scale = dq_w.inputs[0], dq_x.inputs[0], dq_x.inputs[1]
    if w_q.producer() is not None or w_q.name not in plan.integer \
            or w_q.dtype != ir.DataType.INT8:
        return None
    if x_q.dtype not in (ir.DataType.UINT8, ir.DataType.INT8) or (
            x_scale.shape is not None and len(x_scale.shape) > 0):
        return None
    if x_q.dtype == ir.DataType.UINT8 and w_q.name in plan.quantized_output:
        return None  # DQ -> Conv -> Q: onnxruntime makes it QLinearConv
    return dq_x, dq_w


def _conv_translation(plan: ConvPlan, spatial: int) -> Callable[..., Any]:
    def conv(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, groups: int = 1) -> Any:
        """An int8 conv as ``ConvInteger`` -> Cast -> Mul -> Add; otherwise torchlib's."""
        op, ir = _ops(), _ir()
        operands = _conv_operands(input, weight, plan)
        if operands is None:
            from onnxscript.function_libs.torch_lib.ops import core

            fallback = core.aten_conv1d if spatial == 1 else core.aten_conv2d
            return fallback(input, weight, bias, _ints(stride, spatial),
                            _ints(padding, spatial), _ints(dilation, spatial), groups)
        dq_x, dq_w = operands
        x_q, x_scale, w_q = dq_x.inputs[0], dq_x.inputs[1], dq_w.inputs[0]
        x_zp = dq_x.inputs[2] if len(dq_x.inputs) > 2 and dq_x.inputs[2] is not None else \
            _const(0, torch.uint8 if x_q.dtype == ir.DataType.UINT8 else torch.int8)
        pads = _ints(padding, spatial)
        attrs = {"strides": _ints(stride, spatial), "pads": pads + pads,
                 "dilations": _ints(dilation, spatial), "group": int(groups)}
        w_scale = dq_w.inputs[1]
        per_tensor_w = "axis" not in dq_w.attributes  # our per-tensor DequantizeLinear
        if per_tensor_w and len(dq_w.inputs) > 2 and dq_w.inputs[2] is not None:
            acc = op.ConvInteger(x_q, w_q, x_zp, dq_w.inputs[2], **attrs)
        else:  # per channel: the plan checked the zero points are all 0
            acc = op.ConvInteger(x_q, w_q, x_zp, **attrs)
        # per-output-channel factors broadcast over [N, C, *spatial]
        channel = _const([-1] + [1] * spatial, "int64")
        out = op.Mul(op.Cast(acc, to=ir.DataType.FLOAT),
                     op.Reshape(op.Mul(x_scale, w_scale), channel))
        return out if bias is None else op.Add(out, op.Reshape(bias, channel))

    return conv


def translation_table(
    *, integer_linear: bool = True, conv: ConvPlan | None = None
) -> dict[Any, Callable[..., Any]]:
    """The ``custom_translation_table`` for ``torch.onnx.export`` (see the module docstring).

    ``integer_linear=False`` keeps ``linear`` in QDQ form around ``Gemm``/``MatMul`` (for
    runtimes that fuse QDQ themselves); onnxruntime then runs most of them in float.
    ``conv`` (from :func:`conv_plan`) adds the ``ConvInteger`` translation of
    ``conv1d``/``conv2d``; without it convs stay QDQ.

    >>> QD.choose_qparams.tensor in translation_table(integer_linear=False)
    True
    >>> torch.ops.aten.linear.default in translation_table(integer_linear=False)
    False
    """
    table: dict[Any, Callable[..., Any]] = {
        QD.quantize_per_tensor.default: quantize_per_tensor,
        QD.quantize_per_tensor.tensor: quantize_per_tensor,
        QD.quantize_per_tensor.tensor2: quantize_per_tensor,
        QD.dequantize_per_tensor.default: dequantize_per_tensor,
        QD.dequantize_per_tensor.tensor: dequantize_per_tensor,
        QD.dequantize_per_tensor.tensor2: dequantize_per_tensor,
        QD.choose_qparams.tensor: choose_qparams,
    }
    if integer_linear:
        table[torch.ops.aten.linear.default] = linear
    if conv is not None:
        table[torch.ops.aten.conv1d.default] = _conv_translation(conv, 1)
        table[torch.ops.aten.conv2d.default] = _conv_translation(conv, 2)
    return table
