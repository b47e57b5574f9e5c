"""Checks around the ONNX export: what we refuse before exporting, and what onnxruntime ran.

:func:`check_onnx_graph` refuses, before anything is exported, quantization the ONNX
file cannot express at the chosen opset (int16 needs opset 21; the symmetric dynamic
``choose_qparams_symmetric`` has no ONNX counterpart), naming the node and the fix.

:func:`onnxruntime_report` opens a model in onnxruntime with
``SessionOptions.optimized_model_filepath`` set, reads back the graph onnxruntime
actually runs after its QDQ fusions, and returns one :class:`pt2e.report.OpRecord`
per compute node: integer kernels (``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``,
``DynamicQuantizeMatMul``...) as ``"int8"``, float ``Conv``/``Gemm``/``MatMul`` (and
their fused forms) as ``"float"``.

>>> sorted(INT8_KERNELS)[:3]
['ConvInteger', 'DynamicQuantizeMatMul', 'MatMulInteger']
>>> record_for("QGemm", "node_linear_1", ["quantize_per_tensor_2"], {"linear_1": "fc2"})
OpRecord(node='linear_1', op='QGemm', precision='int8', module='fc2', reason='', count=1)
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from pt2e.graph import describe_node
from pt2e.ops import CHOOSE_QPARAMS_OPS, DEQUANTIZE_OPS, QUANTIZE_OPS
from pt2e.report import OpRecord, Report

from .contract import LoweringError

__all__ = [
    "OnnxExportError",
    "check_onnx_graph",
    "onnxruntime_report",
    "record_for",
    "INT8_KERNELS",
    "FLOAT_COMPUTE",
    "MIN_INT16_OPSET",
]

#: onnxruntime kernels that compute on integers (the QDQ fusions' targets)
INT8_KERNELS = frozenset({
    "QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention",
})
#: float compute nodes (what an int8 layer becomes when no fusion takes it); MatMulNBits
#: dequantizes its weights and multiplies in float
FLOAT_COMPUTE = frozenset({
    "Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
    "MatMulNBits", "Einsum", "Attention", "MultiHeadAttention",
})
_EPILOGUE = frozenset({"Cast", "Mul", "Add", "Relu"})
#: ONNX QuantizeLinear/DequantizeLinear accept int16/uint16 from this opset on
MIN_INT16_OPSET = 21

_ALWAYS = {torch.uint8, torch.int8}
_INT16 = {torch.int16, torch.uint16}


class OnnxExportError(LoweringError, ValueError):
    """The converted graph holds quantization the ONNX export cannot express (names the node)."""


def _dtype_arg(node: torch.fx.Node) -> Any:
    if "dtype" in node.kwargs:
        return node.kwargs["dtype"]
    # quantize/dequantize: (x, scale, zp, qmin, qmax, dtype); choose_qparams: (x, qmin, qmax, eps, dtype)
    idx = 4 if node.target in CHOOSE_QPARAMS_OPS else (6 if "per_channel" in str(node.target) else 5)
    return node.args[idx] if len(node.args) > idx else None


def check_onnx_graph(model: GraphModule, *, opset: int) -> None:
    """Raise :class:`OnnxExportError` for a quantize/dequantize the ONNX file cannot hold.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class I16(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.01, 0, -32768, 32767, torch.int16)
    ...         return qd.dequantize_per_tensor.default(q, 0.01, 0, -32768, 32767, torch.int16)
    >>> gm = torch.export.export(I16(), (torch.randn(2),)).module()
    >>> check_onnx_graph(gm, opset=21)
    >>> check_onnx_graph(gm, opset=18)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowering.onnx_checks.OnnxExportError: node 'quantize_per_tensor' (call_function quantized_decomposed.quantize_per_tensor.default) quantizes to torch.int16, which ONNX QuantizeLinear accepts from opset 21 on; export with opset=21 ...
    """
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == torch.ops.quantized_decomposed.choose_qparams_symmetric.tensor:
            raise OnnxExportError(
                f"{describe_node(node)} chooses symmetric dynamic qparams, which has no ONNX "
                "translation; use an affine dynamic activation spec (qscheme=per_tensor_affine) "
                "or a static config"
            )
        if node.target not in QUANTIZE_OPS | DEQUANTIZE_OPS | CHOOSE_QPARAMS_OPS:
            continue
        dtype = _dtype_arg(node)
        verb = "dequantizes" if node.target in DEQUANTIZE_OPS else "quantizes"
        if dtype in _ALWAYS or (dtype == torch.int32 and node.target in DEQUANTIZE_OPS):
            continue
        if dtype in _INT16 and node.target not in CHOOSE_QPARAMS_OPS:
            if opset >= MIN_INT16_OPSET:
                continue
            raise OnnxExportError(
                f"{describe_node(node)} {verb} to {dtype}, which ONNX QuantizeLinear accepts "
                f"from opset {MIN_INT16_OPSET} on; export with opset={MIN_INT16_OPSET} (or "
                "later), or quantize that layer to int8"
            )
        raise OnnxExportError(
            f"{describe_node(node)} {verb} to {dtype}; the ONNX export handles uint8 and int8 "
            f"(int16/uint16 static from opset {MIN_INT16_OPSET}); change the quantizer's spec "
            "for that layer"
        )


def record_for(op_type: str, name: str, outputs: Iterable[str],
               modules: Mapping[str, str]) -> OpRecord:
    """The record of one optimized-graph node, named by the FX node it came from.

    The exporter names each ONNX node ``node_<fx name>`` and each value by its FX node;
    onnxruntime keeps the target node's name when it fuses QDQ (``node_linear``), or
    generates one (``MatMulIntegerToFloat_3``) and keeps the output's name.

    >>> record_for("MatMulIntegerToFloat", "MatMulIntegerToFloat_0", ["linear"], {"linear": "fc1"}).node
    'linear'
    >>> record_for("Gemm", "node_Gemm_7", ["x"], {}).precision
    'float'
    """
    stripped = re.sub(r"(_token_\d+)+$", "", name.removeprefix("fused ").removeprefix("node_"))
    node = stripped
    if stripped not in modules:
        node = next((o for o in outputs if o in modules), stripped)
    precision = "int8" if op_type in INT8_KERNELS else "float"
    reason = "" if precision == "int8" else "onnxruntime runs it in float (no QDQ fusion took it)"
    return OpRecord(node=node, op=op_type, precision=precision, module=modules.get(node, ""),
                    reason=reason)


def onnxruntime_report(
    model: str | os.PathLike[str] | bytes,
    *,
    modules: Mapping[str, str] | None = None,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    title: str = "onnxruntime (optimized graph)",
) -> Report:
    """What onnxruntime runs after its graph optimizations, one record per compute node.

    ``model`` is a path or the serialized bytes; ``modules`` maps FX node names to
    module paths (for the records' ``module``).
    """
    import onnx
    import onnxruntime as ort

    modules = dict(modules or {})
    with tempfile.TemporaryDirectory(prefix="pt2e_ort_") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
        ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                             providers=list(providers))
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
    consumers: dict[str, list[Any]] = {}
    for n in optimized.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def downstream(n: Any) -> list[str]:
        # MatMulInteger -> Cast -> Mul -> Add: the FX name is on the last output
        names, cur = list(n.output), n
        for _ in range(4):
            users = consumers.get(cur.output[0], []) if cur.output else []
            if len(users) != 1 or users[0].op_type not in _EPILOGUE:
                break
            cur = users[0]
            names += list(cur.output)
        return names

    records = [
        record_for(n.op_type, n.name, downstream(n), modules)
        for n in optimized.graph.node
        if n.op_type in INT8_KERNELS or n.op_type in FLOAT_COMPUTE
    ]
    return Report(title=title, records=tuple(records))
