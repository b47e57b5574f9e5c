"""The one home of the quantize/dequantize operator sets.

Converted graphs use PyTorch's standard ``torch.ops.quantized_decomposed`` ops,
registered by importing ``torch.ao.quantization.fx._decomposed``; every backend
(Inductor, XNNPACK, OpenVINO, ONNX exporters) pattern-matches exactly these.

>>> import torch
>>> torch.ops.quantized_decomposed.quantize_per_tensor.default in QUANTIZE_OPS
True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
from torch.fx import Node

# a fact about dtypes, re-exported here beside the ops that take storage dtypes
from observers.facts import storage_dtype

# the blockwise ops (torch.ops.pt2e.*), registered by importing affine_ops
from .affine_ops import (
    AFFINE_CHOOSE_QPARAMS_OPS,
    AFFINE_DEQUANTIZE_OPS,
    AFFINE_OPS,
    AFFINE_QUANTIZE_OPS,
)

__all__ = [
    "QD",
    "QUANTIZE_OPS",
    "DEQUANTIZE_OPS",
    "PER_TENSOR_OPS",
    "PER_CHANNEL_OPS",
    "CHOOSE_QPARAMS_OPS",
    "AFFINE_QUANTIZE_OPS",
    "AFFINE_DEQUANTIZE_OPS",
    "AFFINE_CHOOSE_QPARAMS_OPS",
    "AFFINE_OPS",
    "CONV_OPS",
    "CONV_TRANSPOSE_OPS",
    "LINEAR_OPS",
    "BATCH_NORM_OPS",
    "COMPUTE_OPS",
    "DATA_MOVEMENT_OPS",
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


def _all_overloads(*packets: Any) -> frozenset[Any]:
    return frozenset(getattr(p, name) for p in packets for name in p.overloads())


# The compute-heavy ops (most of a model's FLOPs): the ones a "what stayed float"
# report lists and a lowering check looks for. Matrix products in every overload.
COMPUTE_OPS = (
    CONV_OPS | CONV_TRANSPOSE_OPS | LINEAR_OPS
    | _all_overloads(aten.matmul, aten.bmm, aten.mm, aten.addmm, aten.baddbmm)
    | {aten.einsum.default, aten.scaled_dot_product_attention.default, aten.embedding.default}
)


# Ops that only move, view or copy data (or are identities at inference): their output
# is their input's values, so reports and per-layer tables do not list them as compute.
DATA_MOVEMENT_OPS = frozenset({
    aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int,
    aten.t.default, aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints, aten.contiguous.default,
    aten.clone.default, aten.slice.Tensor, aten.select.int, aten._to_copy.default,
    aten.to.dtype, aten.detach.default, aten.alias.default, aten.dropout.default,
    aten.unflatten.int, aten.split.Tensor, aten.chunk.default, aten.cat.default,
    aten.stack.default, aten.index_select.default, aten.unbind.int,
})


def is_quantize(node: object) -> bool:
    """Whether ``node`` is a ``quantized_decomposed`` quantize call."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in QUANTIZE_OPS


def is_dequantize(node: object) -> bool:
    """Whether ``node`` is a ``quantized_decomposed`` dequantize call."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in DEQUANTIZE_OPS
