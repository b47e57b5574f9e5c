"""Lower a converted (q/dq) graph to an ExecuTorch ``.pte`` with the XNNPACK delegate.

``to_executorch`` runs: copy the model, untie shared bias constants, give float
arithmetic float constants instead of Python numbers (ExecuTorch casts an int
operand with a copy XNNPACK refuses), spell a 2-D/3-D batch norm left unfolded as
``x * scale + shift`` (XNNPACK fails to load it), drop
parameters and buffers no node reads, check the graph for quantization XNNPACK
cannot run, ``torch.export.export``,
``executorch.exir.to_edge_transform_and_lower`` with ``XnnpackPartitioner``,
serialize. The result carries the ``.pte`` bytes and a :class:`DelegationReport`
saying which operators run inside XNNPACK and, for the rest, why not (the
partitioner's own reasons, collected from its log while lowering).

The program is a :class:`lowering.Lowered`: call it like the model (it runs
through a cached :class:`ExecuTorchRunner`). Typical use (not run here: lowering
takes seconds)::

    prog = to_executorch(converted, (x,), path="model.pte")
    print(prog.report.summary())
    y = prog(x)
    assert check_xnnpack_int8(converted, prog) == []
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule, Node

from pt2e.ops import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS
from pt2e.report import OpRecord, Report
from pt2e.untie import untie_shared_conv1d_weight

from .contract import KernelFamily, check_affine_ops, check_int8, check_lowerable
from .executorch_checks import (
    BatchNormToAffinePass,
    DropUnusedConstantsPass,
    FloatScalarOperandsPass,
    SharedOutputPass,
    UntieSharedBiasPass,
    XnnpackLoweringError,
    check_xnnpack_graph,
)
from .executorch_runtime import ExecuTorchRunner

__all__ = [
    "to_executorch",
    "ExecuTorchProgram",
    "DelegationReport",
    "OutsideNode",
    "XnnpackLoweringError",
    "check_xnnpack_int8",
]

# the XNNPACK partitioner explains each rejected node at DEBUG level on these loggers
_WHY_LOGGER = "executorch.backends.xnnpack.partition"
_DELEGATE_CALL = "executorch_call_delegate"
# what a linear/conv becomes in the edge dialect, inside the delegate or (decomposed) outside
_WEIGHTED_OP_NAMES = ("linear", "convolution", "addmm", ".mm.", "bmm")
# the edge operators that are int8 kernels when their inputs are dequantized
_WEIGHTED_EDGE_OPS = frozenset({
    "aten.linear.default", "aten.convolution.default", "aten.addmm.default",
    "aten.mm.default", "aten.bmm.default",
})


@dataclass(frozen=True, kw_only=True)
class OutsideNode(OpRecord):
    """An operator left to ExecuTorch's portable kernels, and why XNNPACK did not take it."""

    reason: str
    precision: str = "float"


@dataclass(frozen=True, kw_only=True)
class DelegationReport(Report):
    """What runs inside the XNNPACK delegate and what stays outside.

    ``records``: one :class:`pt2e.report.OpRecord` per edge operator inside a
    delegate (``precision="int8"`` for a linear/conv whose inputs are dequantized,
    or an op producing an integer tensor) and one :class:`OutsideNode` per operator
    left outside. ``delegated`` counts the inside operators by name
    (``aten.linear.default``...); ``outside`` lists the others.

    >>> r = DelegationReport(num_delegates=1, records=(
    ...     OpRecord(node="aten_linear_default", op="aten.linear.default", precision="int8", count=2),
    ...     OutsideNode(node="sin", op="aten.sin.default", reason="no XNNPACK kernel")))
    >>> r.count("linear"), r.count("sin", delegated=False), r.weighted_outside
    (2, 1, ())
    >>> r.delegated, r.count("linear", precision="int8", delegated=None)
    ({'aten.linear.default': 2}, 2)
    >>> print(r.summary())
    XNNPACK delegates: 1
      inside:  aten.linear.default x2
      outside: sin (aten.sin.default): no XNNPACK kernel
    """

    title: str = ""
    num_delegates: int

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", f"XNNPACK delegates: {self.num_delegates}")

    @property
    def delegated(self) -> dict[str, int]:
        """Operators inside the delegates, by edge operator name."""
        counts: Counter[str] = Counter()
        for r in self.records:
            if not isinstance(r, OutsideNode):
                counts[r.op] += r.count
        return dict(counts)

    @property
    def outside(self) -> tuple[OutsideNode, ...]:
        """Operators left to ExecuTorch's portable kernels, with the partitioner's reason."""
        return tuple(r for r in self.records if isinstance(r, OutsideNode))

    def count(
        self, op: str | None = None, *, precision: str | None = None, delegated: bool | None = True
    ) -> int:
        """How many operators whose name contains ``op`` run inside XNNPACK
        (``delegated=False``: outside it; ``None``: anywhere), of ``precision``."""
        return sum(
            r.count for r in self.records
            if (op is None or op in r.op)
            and (precision is None or r.precision == precision)
            and (delegated is None or isinstance(r, OutsideNode) != delegated)
        )

    @property
    def weighted_outside(self) -> tuple[OutsideNode, ...]:
        """Linear/conv (or their decomposed matmuls) that XNNPACK did not take."""
        return tuple(o for o in self.outside if any(w in o.op for w in _WEIGHTED_OP_NAMES))

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"XNNPACK delegates: {self.num_delegates}"]
        inside = ", ".join(f"{name} x{n}" for name, n in sorted(self.delegated.items()))
        lines.append(f"  inside:  {inside or '-'}")
        outside = self.outside
        if not outside:
            lines.append("  outside: -")
        for o in outside:
            lines.append(f"  outside: {o.node} ({o.op}): {o.reason}")
        return "\n".join(lines)


# int8 inside the delegate, by family (for check_xnnpack_int8); the edge dialect
# spells every conv, transposed or not, aten.convolution.default
XNNPACK_KERNEL_FAMILIES = (
    KernelFamily(name="linear", graph_ops=LINEAR_OPS, kernels=("aten.linear.",)),
    KernelFamily(name="conv", graph_ops=CONV_OPS | CONV_TRANSPOSE_OPS, kernels=("aten.convolution.",)),
)


def check_xnnpack_int8(converted: GraphModule, lowered: Any) -> list[str]:
    """Name the int8 compute ops of ``converted`` that ``lowered`` (from :func:`to_executorch`)
    does not run as quantized ops inside an XNNPACK delegate; ``[]`` when it runs all.

    >>> r = DelegationReport(num_delegates=0)
    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> check_xnnpack_int8(gm, ExecuTorchProgram(buffer=b"", report=r))  # float graph: nothing to check
    []
    """
    inside = Report(title=lowered.report.title, records=tuple(
        r for r in lowered.report.records if not isinstance(r, OutsideNode)))
    return check_int8(converted, inside, families=XNNPACK_KERNEL_FAMILIES, backend="XNNPACK")


@dataclass(frozen=True, kw_only=True)
class ExecuTorchProgram:
    """A serialized ExecuTorch program and how it was delegated.

    Calling it runs ``forward`` in ExecuTorch's runtime, loaded once on the first
    call and kept alive with this object (a :class:`lowering.Lowered`);
    :meth:`runner` loads a separate copy, for another method or another owner.

    >>> p = ExecuTorchProgram(buffer=b"abc", report=DelegationReport(num_delegates=0))
    >>> p.size_bytes
    3
    """

    buffer: bytes
    report: DelegationReport
    path: Path | None = None
    _runners: dict[str, ExecuTorchRunner] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Run ``forward`` on ``inputs``; the outputs are copies the caller owns."""
        if "forward" not in self._runners:
            self._runners["forward"] = ExecuTorchRunner(self.buffer, "forward")
        return self._runners["forward"](*inputs)

    @property
    def size_bytes(self) -> int:
        """Size of the ``.pte`` in bytes."""
        return len(self.buffer)

    def save(self, path: str | Path) -> Path:
        """Write the ``.pte`` to ``path`` and return it."""
        out = Path(path)
        out.write_bytes(self.buffer)
        return out

    def runner(self, method: str = "forward") -> ExecuTorchRunner:
        """Load the program in ExecuTorch's runtime, anew (the runner keeps it alive)."""
        return ExecuTorchRunner(self.buffer, method)


class _WhyCollector(logging.Handler):
    """Collect the partitioner's "why not" messages by node name, as they are logged."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.reasons: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # the message object is reused and mutated by the partitioner: read it now
        msg = record.msg
        node, reason = getattr(msg, "node", None), getattr(msg, "reason", None)
        if node is None or not reason:
            return
        seen = self.reasons.setdefault(node.name, [])
        if reason not in seen:
            seen.append(reason)


def to_executorch(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    *,
    path: str | Path | None = None,
    check: bool = True,
    dynamic_shapes: Any = None,
) -> ExecuTorchProgram:
    """Export ``model`` and lower it to an ExecuTorch program delegated to XNNPACK.

    ``model`` is usually the output of ``convert_pt2e`` (it is copied, never
    modified); a float ``nn.Module`` gives an fp32 XNNPACK program. With
    ``check=True`` the graph is first checked for quantization XNNPACK would
    reject or miscompute (:func:`lowering.executorch_checks.check_xnnpack_graph`).
    ``path`` also writes the ``.pte`` there. The program is called like the model;
    :func:`check_xnnpack_int8` checks its report against the converted graph.

    A graph XNNPACK cannot run is refused before anything is exported:

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class U8(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.1, 128, 0, 255, torch.uint8)
    ...         return qd.dequantize_per_tensor.default(q, 0.1, 128, 0, 255, torch.uint8)
    >>> gm = torch.export.export(U8(), (torch.randn(2),)).module()
    >>> to_executorch(gm, (torch.randn(2),))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowering.executorch_checks.XnnpackLoweringError: node 'quantize_per_tensor' quantizes to torch.uint8, ...
    """
    check_affine_ops(model, "to_executorch")
    check_lowerable(model, "to_executorch")
    inputs = tuple(example_inputs)
    if isinstance(model, GraphModule):
        model = copy.deepcopy(model)
    else:  # a float module: captured first, so that the same fix-ups apply to its graph
        model = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes).module()
    UntieSharedBiasPass()(model)
    # convert_pt2e already unties both; these guards cover graphs converted elsewhere
    untie_shared_conv1d_weight(model)
    SharedOutputPass()(model)
    FloatScalarOperandsPass()(model)
    BatchNormToAffinePass()(model)
    DropUnusedConstantsPass()(model)
    if check:
        check_xnnpack_graph(model)

    # registers the out-variants of quantize/dequantize that run outside the delegate
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)

    collector = _WhyCollector()
    why_logger = logging.getLogger(_WHY_LOGGER)
    old_level, old_propagate = why_logger.level, why_logger.propagate
    why_logger.addHandler(collector)
    why_logger.setLevel(logging.DEBUG)
    why_logger.propagate = False  # keep the DEBUG flood out of the user's handlers
    try:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    finally:
        why_logger.removeHandler(collector)
        why_logger.setLevel(old_level)
        why_logger.propagate = old_propagate

    report = _delegation_report(edge.exported_program().graph_module, collector.reasons)
    buffer = bytes(edge.to_executorch().buffer)
    program = ExecuTorchProgram(buffer=buffer, report=report, path=Path(path) if path else None)
    if path is not None:
        program.save(path)
    return program


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    s = str(target)
    return s if "." in s and not s.startswith("<") else name


def _precision(node: Node) -> str:
    """``"int8"`` for a linear/conv whose inputs are dequantized or a node producing an
    integer tensor (a quantize); ``"float"`` otherwise."""
    if _op_name(node.target) in _WEIGHTED_EDGE_OPS:
        inputs = [a for a in node.args[:2] if isinstance(a, Node)]
        dequantized = all("dequantize" in _op_name(a.target) for a in inputs)
        return "int8" if inputs and dequantized else "float"
    val = node.meta.get("val")
    dtype = getattr(val, "dtype", None)
    return "int8" if dtype is not None and not dtype.is_floating_point and dtype != torch.bool else "float"


def _delegation_report(gm: GraphModule, reasons: dict[str, list[str]]) -> DelegationReport:
    records: list[OpRecord] = []
    num_delegates = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            num_delegates += 1
            lowered = getattr(gm, str(node.target))
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function":
                    precision = _precision(inner)
                    reason = "" if precision == "int8" else "runs in XNNPACK in float"
                    records.append(OpRecord(node=inner.name, op=_op_name(inner.target),
                                            precision=precision, reason=reason))
        elif node.op == "call_function":
            name = _op_name(node.target)
            if _DELEGATE_CALL in name or name in ("getitem", "_operator.getitem"):
                continue
            why = "; ".join(reasons.get(node.name, [])) or "no XNNPACK partitioner config accepts this operator"
            records.append(OutsideNode(node=node.name, op=name, reason=why, precision=_precision(node)))
    return DelegationReport(num_delegates=num_delegates, records=tuple(records))
