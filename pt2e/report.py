"""A readable summary of what a converted model runs in integer and what stayed float."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch.fx import GraphModule, Node

from .capture import describe_node
from .ops import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS, is_dequantize, is_quantize

__all__ = ["QuantizationReport", "quantization_report"]

_COMPUTE = CONV_OPS | CONV_TRANSPOSE_OPS | LINEAR_OPS


def _compute_op(node: Node) -> bool:
    name = str(node.target)
    return node.target in _COMPUTE or name.split(".")[1:2] in (["matmul"], ["bmm"], ["mm"],
                                                               ["addmm"], ["baddbmm"])


@dataclass
class QuantizationReport:
    """Counts of q/dq ops, and the compute ops (conv, linear, matmul) by input precision.

    A compute op counts as quantized when every tensor input comes from a dequantize.
    """

    quantize: int = 0
    dequantize: int = 0
    quantized_ops: Counter[str] = field(default_factory=Counter)
    float_ops: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"quantize ops: {self.quantize}, dequantize ops: {self.dequantize}"]
        lines += [f"  int8 {op}: {n}" for op, n in sorted(self.quantized_ops.items())]
        lines.append(f"compute ops left in float: {len(self.float_ops)}")
        lines += [f"  {d}" for d in self.float_ops]
        return "\n".join(lines)


def quantization_report(model: GraphModule) -> QuantizationReport:
    """Summarise a converted model.

    >>> import torch
    >>> from pt2e.ops import QD
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 4)
    ...         self.out = torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         q = QD.quantize_per_tensor.default(x, 0.1, 0, -128, 127, torch.int8)
    ...         x = QD.dequantize_per_tensor.default(q, 0.1, 0, -128, 127, torch.int8)
    ...         return self.out(self.fc(x))
    >>> gm = torch.export.export(M(), (torch.randn(1, 4),)).module()
    >>> print(quantization_report(gm))
    quantize ops: 1, dequantize ops: 1
    compute ops left in float: 2
      node 'linear' (call_function aten.linear.default, module 'fc')
      node 'linear_1' (call_function aten.linear.default, module 'out')
    """
    report = QuantizationReport()
    for node in model.graph.nodes:
        if is_quantize(node):
            report.quantize += 1
        elif is_dequantize(node):
            report.dequantize += 1
        elif node.op == "call_function" and _compute_op(node):
            tensor_inputs = [a for a in node.args[:2] if isinstance(a, Node)]
            if tensor_inputs and all(is_dequantize(a) for a in tensor_inputs):
                report.quantized_ops[str(node.target)] += 1
            else:
                report.float_ops.append(describe_node(node))
    return report
