"""One report type for "what runs in int8 and what stayed float", by name.

Every stage that can say which operators run on integer kernels says it with a
:class:`Report` of :class:`OpRecord` s: the quantizer (what it left float),
:func:`quantization_report` (the converted graph), and each lowering (the
kernels Inductor generated, the operators ExecuTorch delegated). Subclasses keep
their own extra fields and printed format; every one of them can be counted,
filtered and serialised the same way.

>>> r = Report(title="toy backend", records=(
...     OpRecord(node="fc", op="aten.linear.default", precision="int8", module="net.0"),
...     OpRecord(node="head", op="aten.linear.default", precision="float",
...              module="net.2", reason="skipped by the config"),
... ))
>>> print(r)
toy backend
  fc (aten.linear.default in 'net.0')
  head (aten.linear.default in 'net.2'): skipped by the config
>>> r.count("linear"), r.count("linear", precision="int8"), len(r.float_records)
(2, 1, 1)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch.fx import GraphModule, Node

from .errors import ArgumentValueError
from .graph import module_path
from .ops import (
    AFFINE_DEQUANTIZE_OPS,
    AFFINE_OPS,
    AFFINE_QUANTIZE_OPS,
    CHOOSE_QPARAMS_OPS,
    COMPUTE_OPS,
    DATA_MOVEMENT_OPS,
    is_dequantize,
    is_quantize,
)

__all__ = ["OpRecord", "Report", "QuantizationReport", "quantization_report"]

INT8 = "int8"


@dataclass(frozen=True, kw_only=True)
class OpRecord:
    """One operator (a graph node, a runtime layer or a kernel call) and its precision.

    ``precision`` is ``"int8"`` for any integer kernel (u8, i8, int4...), otherwise
    ``"float"`` or the float dtype (``"f32"``). ``reason`` says why it stayed float.
    ``count`` folds identical records (the same kernel called several times).

    >>> print(OpRecord(node="mm", op="extern_kernels.mm", precision="float", count=3))
    mm (extern_kernels.mm) x3
    """

    node: str
    op: str
    precision: str
    module: str = ""
    reason: str = ""
    count: int = 1

    def __post_init__(self) -> None:
        if not self.precision:
            raise ArgumentValueError(
                f"OpRecord(node={self.node!r}): precision is empty; pass \"int8\" for an integer "
                "kernel, otherwise \"float\" (or the float dtype, e.g. \"f32\")"
            )
        if not isinstance(self.count, int) or self.count < 1:
            raise ArgumentValueError(
                f"OpRecord(node={self.node!r}): count={self.count!r}; pass how many identical "
                "operators this record stands for (an int >= 1)"
            )

    @property
    def is_int8(self) -> bool:
        """Whether this operator ran on an integer kernel."""
        return self.precision == INT8

    def __str__(self) -> str:
        where = f" in '{self.module}'" if self.module else ""
        text = f"{self.node} ({self.op}{where})"
        if self.reason:
            text += f": {self.reason}"
        if self.count > 1:
            text += f" x{self.count}"
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, OpRecord):
        return {"type": type(value).__name__, **asdict(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Report:
    """A titled list of :class:`OpRecord` s: what ran in int8, what stayed float, and why.

    >>> r = Report(title="t", records=(OpRecord(node="a", op="aten.mm.default", precision="int8"),))
    >>> r.to_dict()["records"][0]["precision"]
    'int8'
    """

    title: str
    records: tuple[OpRecord, ...] = ()

    @property
    def int8_records(self) -> tuple[OpRecord, ...]:
        """The records of operators that ran on integer kernels."""
        return tuple(r for r in self.records if r.is_int8)

    @property
    def float_records(self) -> tuple[OpRecord, ...]:
        """The records of operators that stayed float."""
        return tuple(r for r in self.records if not r.is_int8)

    def count(self, op: str | None = None, *, precision: str | None = None) -> int:
        """How many operators (summing ``count``) whose ``op`` contains ``op``, of ``precision``."""
        return sum(
            r.count for r in self.records
            if (op is None or op in r.op) and (precision is None or r.precision == precision)
        )

    def summary(self) -> str:
        """The title, then one indented line per record."""
        return "\n".join([self.title] + ["  " + str(r) for r in self.records])

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Every field (records included) as plain JSON-able values, plus the report's type."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out


@dataclass(frozen=True, kw_only=True)
class QuantizationReport(Report):
    """Counts of q/dq ops, the compute ops (conv, linear, matmul...) by input precision, and
    every other operator that stayed float.

    A compute op (:data:`pt2e.ops.COMPUTE_OPS`) counts as quantized when every
    floating-point tensor among its first two inputs comes from a dequantize.
    Every other operator that computes a float tensor from float tensors not all
    coming from a dequantize (``gelu``, ``layer_norm``, ``softmax``, custom
    ``torch.library`` ops; not views, copies or q/dq, nor an elementwise post-op such
    as ``relu`` between an int8 conv/linear and a quantize, which backends fuse into
    the integer kernel) is recorded as float too. Operators inside control-flow
    bodies (``torch.cond`` branches, ``while_loop`` and ``scan`` bodies, which prepare
    and convert quantize like top-level code) are classified the same way and named
    ``body.node``. ``quantized_ops`` and ``float_ops`` (compute ops), ``other_float_ops``
    and ``branch_ops`` are views of :attr:`records`.
    """

    title: str = ""
    quantize: int = 0
    dequantize: int = 0

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(
                self, "title", f"quantize ops: {self.quantize}, dequantize ops: {self.dequantize}"
            )

    @property
    def quantized_ops(self) -> Counter[str]:
        """How many compute ops of each operator take dequantized inputs."""
        counts: Counter[str] = Counter()
        for r in self.int8_records:
            counts[r.op] += r.count
        return counts

    @property
    def float_ops(self) -> list[str]:
        """One description per compute op left in float (node, operator, module path)."""
        return [
            f"node '{r.node}' (call_function {r.op}" + (f", module '{r.module}')" if r.module else ")")
            for r in self.float_records if _is_compute_record(r)
        ]

    @property
    def other_float_ops(self) -> tuple[OpRecord, ...]:
        """The non-compute operators (``gelu``, ``layer_norm``, ``softmax``, ``add``, custom
        ops...) that run on float inputs, branches included."""
        return tuple(r for r in self.float_records if not _is_compute_record(r))

    @property
    def branch_ops(self) -> tuple[OpRecord, ...]:
        """The operators inside control-flow bodies (int8 and float), named ``body.node``."""
        return tuple(r for r in self.records if "." in r.node)

    def summary(self) -> str:
        lines = [f"quantize ops: {self.quantize}, dequantize ops: {self.dequantize}"]
        lines += [f"  int8 {op}: {n}" for op, n in sorted(self.quantized_ops.items())]
        float_ops = self.float_ops
        lines.append(f"compute ops left in float: {len(float_ops)}")
        lines += [f"  {d}" for d in float_ops]
        others = self.other_float_ops
        if others:
            by_op: dict[str, list[str]] = {}
            for r in others:
                by_op.setdefault(r.op, []).append(r.node)
            lines.append(f"other ops left in float: {len(others)}")
            for op, nodes in sorted(by_op.items()):
                shown = ", ".join(nodes[:4]) + (", ..." if len(nodes) > 4 else "")
                lines.append(f"  {op}: {len(nodes)} ({shown})")
        return "\n".join(lines)




def _is_compute_record(r: OpRecord) -> bool:
    return r.op in _COMPUTE_NAMES


_COMPUTE_NAMES = frozenset(str(op) for op in COMPUTE_OPS)


def _is_float_tensor(node: Node) -> bool:
    val = node.meta.get("val")
    dtype = getattr(val, "dtype", None)
    # no metadata: assume a float activation (the conservative answer for a report)
    return dtype is None or dtype.is_floating_point


def _float_inputs(node: Node) -> list[Node] | None:
    """The float tensor inputs (of the first two) not produced by a dequantize; ``None`` if
    the op has no tensor input at all."""
    tensors = [a for a in node.args[:2] if isinstance(a, Node)]
    if not tensors:
        return None
    return [a for a in tensors if not _dequantizes(a) and _is_float_tensor(a)]


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
    >>> report = quantization_report(gm)
    >>> print(report)
    quantize ops: 1, dequantize ops: 1
    compute ops left in float: 2
      node 'linear' (call_function aten.linear.default, module 'fc')
      node 'linear_1' (call_function aten.linear.default, module 'out')
    >>> print(report.float_records[1])
    linear_1 (aten.linear.default in 'out'): float input 'linear', 'out_weight' (not from a dequantize)
    """
    from .numeric_debugger import control_flow_subgraphs

    quantize = dequantize = 0
    records: list[OpRecord] = []
    queue: list[tuple[str, GraphModule]] = [("", model)]
    while queue:
        prefix, gm = queue.pop(0)
        fused: set[Node] = set()  # int8 compute ops and the post-ops a backend fuses into them
        for node in gm.graph.nodes:
            if _quantizes(node):
                quantize += 1
            elif _dequantizes(node):
                dequantize += 1
            elif (record := _record(node, prefix, fused)) is not None:
                records.append(record)
        queue += [(f"{prefix}{name}.", sub) for name, sub, _ in control_flow_subgraphs(gm)]
    return QuantizationReport(quantize=quantize, dequantize=dequantize, records=tuple(records))


def _quantizes(node: object) -> bool:
    """A quantize node: ``quantized_decomposed`` or the affine family (``torch.ops.pt2e``)."""
    return is_quantize(node) or (isinstance(node, Node) and node.target in AFFINE_QUANTIZE_OPS)


def _dequantizes(node: object) -> bool:
    """A dequantize node: ``quantized_decomposed`` or the affine family (``torch.ops.pt2e``)."""
    return is_dequantize(node) or (isinstance(node, Node) and node.target in AFFINE_DEQUANTIZE_OPS)


def _is_other_compute(node: Node) -> bool:
    """An operator computing a float tensor that is not a view/copy, a q/dq or a constant."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target in DATA_MOVEMENT_OPS:
        return False
    if target.namespace == "quantized_decomposed" or target in CHOOSE_QPARAMS_OPS | AFFINE_OPS:
        return False
    if not any(isinstance(a, Node) and _is_float_tensor(a) for a in node.all_input_nodes):
        return False
    val = node.meta.get("val")
    dtype = getattr(val, "dtype", None)
    return dtype is None or bool(dtype.is_floating_point)


_aten = torch.ops.aten
# elementwise post-ops that int8 conv/linear kernels fuse (oneDNN, XNNPACK, OpenVINO, ORT):
# between an int8 compute op and a quantize they run inside the integer kernel
_POST_OPS = frozenset({
    _aten.relu.default, _aten.relu_.default, _aten.hardtanh.default, _aten.hardtanh_.default,
    _aten.gelu.default, _aten.silu.default, _aten.silu_.default, _aten.hardswish.default,
    _aten.hardswish_.default, _aten.leaky_relu.default, _aten.tanh.default,
    _aten.sigmoid.default, _aten.add.Tensor, _aten.add_.Tensor,
})


def _feeds_quantize(node: Node, depth: int = 3) -> bool:
    """Whether every user of ``node`` is a quantize, directly or through further post-ops."""
    if not node.users or depth == 0:
        return False
    return all(_quantizes(u) or (u.target in _POST_OPS and _feeds_quantize(u, depth - 1))
               for u in node.users)


def _is_fused_post_op(node: Node, fused: set[Node]) -> bool:
    if node.target not in _POST_OPS:
        return False
    inputs = [a for a in node.all_input_nodes if _is_float_tensor(a)]
    return (any(a in fused for a in inputs) and all(a in fused or _dequantizes(a) for a in inputs)
            and _feeds_quantize(node))


def _record(node: Node, prefix: str, fused: set[Node]) -> OpRecord | None:
    if node.op != "call_function":
        return None
    op, module, name = str(node.target), module_path(node), prefix + node.name
    where = f" in control-flow body '{prefix[:-1]}'" if prefix else ""
    if node.target in COMPUTE_OPS:
        float_inputs = _float_inputs(node)
        if float_inputs == []:
            fused.add(node)
            return OpRecord(node=name, op=op, precision=INT8, module=module)
        return OpRecord(node=name, op=op, precision="float", module=module,
                        reason=_float_reason(node, float_inputs) + where)
    if not _is_other_compute(node):
        return None
    if _is_fused_post_op(node, fused):
        fused.add(node)
        return None  # conv -> relu -> quantize: the relu runs inside the int8 kernel
    float_inputs = [a for a in node.all_input_nodes if not _dequantizes(a) and _is_float_tensor(a)]
    if not float_inputs:
        return None  # runs on dequantized values: a backend can fuse it into int8
    return OpRecord(node=name, op=op, precision="float", module=module,
                    reason="no int8 pattern: " + _float_reason(node, float_inputs) + where)


def _float_reason(node: Node, float_inputs: list[Node] | None) -> str:
    if not float_inputs:
        return "no tensor input"
    names = ", ".join(f"'{a.name}'" for a in float_inputs)
    return f"float input {names} (not from a dequantize)"
