"""The one home of the quantize/dequantize operator sets.

Converted graphs use PyTorch's standard ``torch.ops.quantized_decomposed`` ops,
registered by importing ``torch.ao.quantization.fx._decomposed``; every backend
(Inductor, XNNPACK, OpenVINO, ONNX exporters) pattern-matches exactly these.

>>> import torch
>>> torch.ops.quantized_decomposed.quantize_per_tensor.default in QUANTIZE_OPS
True
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
from torch.fx import Node

__all__ = [
    "QD",
    "QUANTIZE_OPS",
    "DEQUANTIZE_OPS",
    "PER_TENSOR_OPS",
    "PER_CHANNEL_OPS",
    "CHOOSE_QPARAMS_OPS",
    "CONV_OPS",
    "CONV_TRANSPOSE_OPS",
    "LINEAR_OPS",
    "BATCH_NORM_OPS",
    "is_quantize",
    "is_dequantize",
    "storage_dtype",
]

QD = torch.ops.quantized_decomposed

QUANTIZE_OPS = frozenset({
    QD.quantize_per_tensor.default,
    QD.quantize_per_tensor.tensor,
    QD.quantize_per_tensor.tensor2,
    QD.quantize_per_channel.default,
})
DEQUANTIZE_OPS = frozenset({
    QD.dequantize_per_tensor.default,
    QD.dequantize_per_tensor.tensor,
    QD.dequantize_per_tensor.tensor2,
    QD.dequantize_per_channel.default,
})
PER_TENSOR_OPS = frozenset({
    QD.quantize_per_tensor.default,
    QD.quantize_per_tensor.tensor,
    QD.quantize_per_tensor.tensor2,
    QD.dequantize_per_tensor.default,
    QD.dequantize_per_tensor.tensor,
    QD.dequantize_per_tensor.tensor2,
})
PER_CHANNEL_OPS = frozenset({QD.quantize_per_channel.default, QD.dequantize_per_channel.default})
CHOOSE_QPARAMS_OPS = frozenset({
    QD.choose_qparams.tensor,
    QD.choose_qparams_symmetric.tensor,
})

aten = torch.ops.aten

# ATen operator families that several stages and backends match on
CONV_OPS = frozenset({
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,
})
CONV_TRANSPOSE_OPS = frozenset({
    aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input,
})
LINEAR_OPS = frozenset({aten.linear.default})
# eval-mode batch norm appears as either op, depending on how the model was exported
BATCH_NORM_OPS = frozenset({
    aten.batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
})

# torch's quantized dtypes map to the plain integer dtype the decomposed ops take
_STORAGE = {
    torch.quint8: torch.uint8,
    torch.qint8: torch.int8,
    torch.qint32: torch.int32,
    torch.quint4x2: torch.uint8,
}


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The plain integer dtype a (possibly quantized) dtype is stored in.

    >>> import torch
    >>> storage_dtype(torch.quint8), storage_dtype(torch.int8)
    (torch.uint8, torch.int8)
    """
    return _STORAGE.get(dtype, dtype)


def is_quantize(node: object) -> bool:
    """Whether ``node`` is a ``quantized_decomposed`` quantize call."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in QUANTIZE_OPS


def is_dequantize(node: object) -> bool:
    """Whether ``node`` is a ``quantized_decomposed`` dequantize call."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in DEQUANTIZE_OPS
