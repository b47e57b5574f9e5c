"""Lower a converted (q/dq) graph to an ExecuTorch ``.pte`` with the XNNPACK delegate.

``to_executorch`` runs: copy the model, untie shared bias constants, drop the
float weights ``convert_pt2e`` left behind unused, check the
graph for quantization XNNPACK cannot run, ``torch.export.export``,
``executorch.exir.to_edge_transform_and_lower`` with ``XnnpackPartitioner``,
serialize. The result carries the ``.pte`` bytes and a :class:`DelegationReport`
saying which operators run inside XNNPACK and, for the rest, why not (the
partitioner's own reasons, collected from its log while lowering).

Typical use (not run here: lowering takes seconds)::

    prog = to_executorch(converted, (x,), path="model.pte")
    print(prog.report.summary())
    y = prog.runner()(x)
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
from torch.fx import GraphModule

from .executorch_checks import (
    DropUnusedConstantsPass,
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
]

# the XNNPACK partitioner explains each rejected node at DEBUG level on these loggers
_WHY_LOGGER = "executorch.backends.xnnpack.partition"
_DELEGATE_CALL = "executorch_call_delegate"
# what a linear/conv becomes in the edge dialect, inside the delegate or (decomposed) outside
_WEIGHTED_OP_NAMES = ("linear", "convolution", "addmm", ".mm.", "bmm")


@dataclass(frozen=True, kw_only=True)
class OutsideNode:
    """An operator left to ExecuTorch's portable kernels, and why XNNPACK did not take it."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class DelegationReport:
    """What runs inside the XNNPACK delegate and what stays outside.

    ``delegated`` counts edge operators by name (``aten.linear.default``...)
    across all delegate calls; ``outside`` lists the other operator nodes.

    >>> r = DelegationReport(num_delegates=1, delegated={"aten.linear.default": 2},
    ...                      outside=(OutsideNode(node="sin", op="aten.sin.default",
    ...                                           reason="no XNNPACK kernel"),))
    >>> r.count("linear"), r.count("sin", delegated=False), r.weighted_outside
    (2, 1, ())
    >>> print(r.summary())
    XNNPACK delegates: 1
      inside:  aten.linear.default x2
      outside: sin (aten.sin.default): no XNNPACK kernel
    """

    num_delegates: int
    delegated: dict[str, int] = field(default_factory=dict)
    outside: tuple[OutsideNode, ...] = ()

    def count(self, op: str, *, delegated: bool = True) -> int:
        """How many nodes whose operator name contains ``op`` run inside (or outside) XNNPACK."""
        if delegated:
            return sum(n for name, n in self.delegated.items() if op in name)
        return sum(1 for o in self.outside if op in o.op)

    @property
    def weighted_outside(self) -> tuple[OutsideNode, ...]:
        """Linear/conv (or their decomposed matmuls) that XNNPACK did not take."""
        return tuple(o for o in self.outside if any(w in o.op for w in _WEIGHTED_OP_NAMES))

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"XNNPACK delegates: {self.num_delegates}"]
        inside = ", ".join(f"{name} x{n}" for name, n in sorted(self.delegated.items()))
        lines.append(f"  inside:  {inside or '-'}")
        if not self.outside:
            lines.append("  outside: -")
        for o in self.outside:
            lines.append(f"  outside: {o.node} ({o.op}): {o.reason}")
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class ExecuTorchProgram:
    """A serialized ExecuTorch program and how it was delegated.

    >>> p = ExecuTorchProgram(buffer=b"abc", report=DelegationReport(num_delegates=0))
    >>> p.size_bytes
    3
    """

    buffer: bytes
    report: DelegationReport
    path: Path | None = None

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
        """Load the program in ExecuTorch's runtime (the runner keeps it alive)."""
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
    ``path`` also writes the ``.pte`` there.
    """
    # registers the out-variants of quantize/dequantize that run outside the delegate
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    inputs = tuple(example_inputs)
    if isinstance(model, GraphModule):
        model = copy.deepcopy(model)
        UntieSharedBiasPass()(model)
        DropUnusedConstantsPass()(model)
        if check:
            check_xnnpack_graph(model)
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


def _delegation_report(gm: GraphModule, reasons: dict[str, list[str]]) -> DelegationReport:
    delegated: Counter[str] = Counter()
    outside: list[OutsideNode] = []
    num_delegates = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            num_delegates += 1
            lowered = getattr(gm, str(node.target))
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function":
                    delegated[_op_name(inner.target)] += 1
        elif node.op == "call_function":
            name = _op_name(node.target)
            if _DELEGATE_CALL in name or name in ("getitem", "_operator.getitem"):
                continue
            why = "; ".join(reasons.get(node.name, [])) or "no XNNPACK partitioner config accepts this operator"
            outside.append(OutsideNode(node=node.name, op=name, reason=why))
    return DelegationReport(num_delegates=num_delegates, delegated=dict(delegated), outside=tuple(outside))
