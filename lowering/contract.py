"""The lowering contract: what every backend's lower function takes, returns and proves.

A *lower function* takes the converted (q/dq) graph and example inputs, plus
backend options as keywords, and returns a :class:`Lowered` artefact::

    def lower(model: GraphModule, example_inputs: Sequence[Any], **options) -> Lowered

The artefact is called like the model and returns outputs the caller owns (never
views of the backend's buffers). Its ``report`` is a :class:`pt2e.report.Report`
saying, by name, what ran in int8 and what stayed float, as the *backend* saw it
(generated code, delegated subgraphs, runtime layer precisions), not as the
graph intended. A backend's *check function* compares the two:
:func:`check_int8` names every compute op the converted graph runs in int8
(:func:`pt2e.quantization_report`) that the backend ran in float.

:mod:`lowering.backends` registers each backend's quantizer, lower function and
check. ``compile_x86`` (:class:`lowering.X86CompiledModel`) and ``to_executorch``
(:class:`lowering.ExecuTorchProgram`) follow this contract.

A toy backend that "lowers" by running the graph eagerly, and claims int8 for
every linear whose inputs are dequantized:

>>> import torch
>>> from pt2e import quantization_report
>>> from pt2e.report import Report
>>> class Eager:
...     def __init__(self, gm):
...         self.gm, self.report = gm, Report(title="eager", records=quantization_report(gm).records)
...     def __call__(self, *args):
...         return self.gm(*args)
>>> def lower_eager(model, example_inputs, **options):
...     return Eager(model)
>>> gm = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),)).module()
>>> lowered = lower_eager(gm, (torch.randn(1, 4),))
>>> isinstance(lowered, Lowered), lowered(torch.randn(1, 4)).shape
(True, torch.Size([1, 2]))
>>> LINEAR = KernelFamily(name="linear", graph_ops=frozenset({torch.ops.aten.linear.default}),
...                       kernels=("linear",))
>>> check_int8(gm, lowered.report, families=(LINEAR,), backend="eager")  # nothing was int8
[]
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch.fx import GraphModule, Node

from pt2e.errors import (
    ArgumentValueError,
    PipelineStateError,
    Pt2eError,
    UnsupportedOperationError,
)
from pt2e.graph import describe_node
from pt2e.ops import AFFINE_CHOOSE_QPARAMS_OPS, AFFINE_DEQUANTIZE_OPS
from pt2e.prepare import observer_nodes
from pt2e.quantize_pt2e import CONVERTED_FLAG, PREPARED_FLAG
from pt2e.report import OpRecord, Report, quantization_report

__all__ = [
    "Lowered",
    "LowerFunction",
    "CheckFunction",
    "KernelFamily",
    "check_int8",
    "LoweringError",
    "NotLoweredYetError",
    "check_lowerable",
    "check_affine_ops",
]


class LoweringError(Pt2eError):
    """Base class of the errors lowering raises on user input."""


class NotLoweredYetError(LoweringError, AttributeError):
    """The artefact has no report yet: it compiles on its first call.

    An ``AttributeError``, so ``hasattr(compiled, "report")`` (and therefore
    ``isinstance(compiled, Lowered)``) is ``False`` until then.
    """


# torch's own warnings that every lowering call would print, though nothing the user
# did causes them (torch 2.13): (category, message regex, module regex)
TORCH_LOWERING_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    # Inductor's oneDNN qlinear lowering copies a weight zero point with torch.tensor(t)
    (UserWarning, r"To copy construct from a tensor", r"torch\._inductor\."),
    # compiling imports modules that still define TorchScript methods
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated", r"torch\."),
)


@contextlib.contextmanager
def quiet_torch_lowering() -> Iterator[None]:
    """Within the block, hide :data:`TORCH_LOWERING_NOISE` (torch's, not the user's, warnings).

    The filters are scoped with ``warnings.catch_warnings``: the caller's own filters and
    every other warning are untouched.

    >>> import warnings
    >>> before = list(warnings.filters)
    >>> with quiet_torch_lowering():
    ...     pass
    >>> warnings.filters == before
    True
    """
    with warnings.catch_warnings():
        for category, message, module in TORCH_LOWERING_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def check_lowerable(model: Any, where: str) -> None:
    """Refuse a model that ``prepare_pt2e`` prepared but ``convert_pt2e`` did not convert.

    Every lower function calls this first: lowering a prepared model would compile its
    observers and return a float model. A float model (never prepared) and a converted
    one pass.

    >>> import torch
    >>> from pt2e import prepare_pt2e
    >>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    >>> gm = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),)).module()
    >>> prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config()))
    >>> check_lowerable(prepared, "compile_x86")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pt2e.errors.PipelineStateError: compile_x86 got a model that is prepared but not converted ...
    """
    if not isinstance(model, GraphModule) or model.meta.get(CONVERTED_FLAG):
        return
    observers = observer_nodes(model)
    if model.meta.get(PREPARED_FLAG) or observers:
        raise PipelineStateError(
            f"{where} got a model that is prepared but not converted (it has {len(observers)} "
            "observer(s), e.g. "
            + ", ".join(f"'{n.target}'" for n in observers[:3])
            + "): lowering it would compile the observers and run in float. Calibrate it, "
            f"call convert_pt2e(prepared), and pass the converted model to {where}"
        )


def _affine_kind(dq: Node) -> str:
    """What an affine dequantize stands for, and how to get it lowered instead."""
    src, block, scale, _, dtype = dq.args[:5]
    qmin, qmax = (list(dq.args[5:7]) + [None, None])[:2]
    dynamic = isinstance(scale, Node) and any(
        a.target in AFFINE_CHOOSE_QPARAMS_OPS for a in scale.all_input_nodes
    )
    rng = f" in [{qmin}, {qmax}]" if qmin is not None else ""
    what = f"{dtype}{rng}, block_size={list(block)}"  # type: ignore[arg-type]
    if dynamic:
        return (
            f"dynamic per-token/blockwise activations ({what}): use a per-tensor dynamic "
            "activation spec (PlaceholderObserver with is_dynamic=True, e.g. "
            "get_symmetric_quantization_config(is_dynamic=True)) for this backend"
        )
    weight = isinstance(src, Node) and src.op == "get_attr"
    if str(dtype).startswith("torch.float8"):
        return (
            f"float8 blockwise/per-channel values ({what}): no backend here has float8 "
            "kernels; quantize to int8 per channel, or run the converted model in PyTorch"
        )
    if weight:
        return (
            f"per-group/blockwise weights ({what}): for int4 weight-only linears use the eager "
            "flow, quantizers.quantize_(model, Int4WeightOnlyConfig(group_size=...)), which "
            "runs CPU int4 kernels; for this backend quantize weights per channel "
            "(PerChannelMinMaxObserver, qscheme=torch.per_channel_symmetric)"
        )
    return (
        f"blockwise activations ({what}): use a per-tensor activation spec (MinMaxObserver / "
        "HistogramObserver) for this backend"
    )


def check_affine_ops(model: Any, backend: str) -> None:
    """Refuse a graph holding ``torch.ops.pt2e`` affine (blockwise) quantize/dequantize ops.

    No backend here has kernels for blockwise quantization (per-group int4 weights,
    per-token activations, per-channel float8): Inductor would run them as float
    fallbacks, XNNPACK's partitioner, OpenVINO's frontend and ONNX's exporter do not
    recognise them. Every lower function calls this first; the error names each
    affine node, what it quantizes and the path that does lower it. The converted
    model itself still runs in PyTorch.

    >>> import torch
    >>> import pt2e  # registers torch.ops.pt2e.*
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("w", torch.ones(4, 8, dtype=torch.int8))
    ...         self.register_buffer("s", torch.ones(4, 2))
    ...     def forward(self, x):
    ...         w = torch.ops.pt2e.dequantize_affine(self.w, [1, 4], self.s, None, torch.int8, -8, 7)
    ...         return torch.nn.functional.linear(x, w)
    >>> gm = torch.export.export(M(), (torch.randn(1, 8),)).module()
    >>> check_affine_ops(gm, "toy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pt2e.errors.UnsupportedOperationError: toy cannot lower pt2e's affine quantize/dequantize ops: node 'dequantize_affine' ... per-group/blockwise weights (torch.int8 in [-8, 7], block_size=[1, 4]): ...
    """
    if not isinstance(model, GraphModule):
        return
    dqs = [n for n in model.graph.nodes if n.op == "call_function" and n.target in AFFINE_DEQUANTIZE_OPS]
    if not dqs:
        return
    lines = [
        f"{describe_node(dq)}, feeding "
        + (", ".join(describe_node(u) for u in dq.users) or "the output")
        + f": {_affine_kind(dq)}"
        for dq in dqs[:4]
    ]
    more = f" (and {len(dqs) - 4} more)" if len(dqs) > 4 else ""
    raise UnsupportedOperationError(
        f"{backend} cannot lower pt2e's affine quantize/dequantize ops: "
        + "; ".join(lines) + more
        + ". The converted model runs as is in PyTorch (the ops are torch.ops.pt2e.*)."
    )


@runtime_checkable
class Lowered(Protocol):
    """A lowered model: call it like the model; ``report`` says what ran in int8."""

    @property
    def report(self) -> Report: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# keyword options differ per backend, so the type checker only sees the positional part
LowerFunction = Callable[..., Lowered]
CheckFunction = Callable[[GraphModule, Lowered], list[str]]


@dataclass(frozen=True, kw_only=True)
class KernelFamily:
    """One kind of compute op, as the converted graph and as a backend's report name it.

    ``graph_ops``: the ATen ops of the converted graph (e.g. ``pt2e.ops.LINEAR_OPS``);
    ``kernels``: substrings of the report's ``op`` names of that family's int8 kernels
    (``("qlinear",)`` for oneDNN, ``("linear",)`` inside an XNNPACK delegate). A family
    with no kernels is one the backend never runs in int8.
    """

    name: str
    graph_ops: frozenset[Any]
    kernels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.graph_ops:
            raise ArgumentValueError(
                f"KernelFamily(name={self.name!r}) got an empty graph_ops; pass the ATen "
                "ops of the converted graph this family covers, e.g. pt2e.ops.LINEAR_OPS"
            )

    def covers(self, op: str) -> bool:
        """Whether the converted graph's operator name ``op`` belongs to this family."""
        return op in {str(o) for o in self.graph_ops}

    def int8_kernels(self, records: Iterable[OpRecord]) -> int:
        """How many of ``records`` are int8 kernels of this family."""
        return sum(r.count for r in records if r.is_int8 and any(k in r.op for k in self.kernels))


def check_int8(
    converted: GraphModule,
    report: Report,
    *,
    families: Sequence[KernelFamily],
    backend: str,
) -> list[str]:
    """Name the compute ops ``converted`` runs in int8 that the backend ran in float.

    Backends name kernels, not graph nodes, so ops are matched by family: if the
    converted graph has N int8 ops of a family and the backend's ``report`` shows
    K < N int8 kernels of that family, the message names the family's N nodes and
    says N - K of them ran in float (with the report's float compute records). An
    int8 op in no family is a problem too: the backend has no int8 kernel for it.
    Returns one message per problem; ``[]`` means every int8 op ran in int8.

    >>> import torch
    >>> from pt2e.ops import QD
    >>> from pt2e.report import OpRecord, Report
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("w", torch.ones(4, 4, dtype=torch.int8))
    ...     def forward(self, x):
    ...         x = QD.dequantize_per_tensor.default(x, 0.1, 0, -128, 127, torch.int8)
    ...         w = QD.dequantize_per_tensor.default(self.w, 0.1, 0, -128, 127, torch.int8)
    ...         return torch.nn.functional.linear(x, w)
    >>> gm = torch.export.export(M(), (torch.zeros(1, 4, dtype=torch.int8),)).module()
    >>> LINEAR = KernelFamily(name="linear", graph_ops=frozenset({torch.ops.aten.linear.default}),
    ...                       kernels=("qlinear",))
    >>> ran_float = Report(title="k", records=(OpRecord(node="buf0", op="mm", precision="float"),))
    >>> print(check_int8(gm, ran_float, families=(LINEAR,), backend="toy")[0])
    toy ran 1 of 1 int8 linear op(s) of the converted graph in float (int8 in the graph: 'linear'); the backend's float compute: buf0 (mm)
    >>> ran_int8 = Report(title="k", records=(OpRecord(node="buf0", op="qlinear", precision="int8"),))
    >>> check_int8(gm, ran_int8, families=(LINEAR,), backend="toy")
    []
    """
    graph_int8 = quantization_report(converted).int8_records
    backend_float = ", ".join(str(r) for r in report.float_records) or "none reported"
    problems: list[str] = []
    for family in families:
        nodes = [r.node for r in graph_int8 if family.covers(r.op)]
        if not nodes:
            continue
        ran = family.int8_kernels(report.records)
        if ran < len(nodes):
            names = ", ".join(f"'{n}'" for n in nodes)
            problems.append(
                f"{backend} ran {len(nodes) - ran} of {len(nodes)} int8 {family.name} op(s) of the "
                f"converted graph in float (int8 in the graph: {names}); the backend's float "
                f"compute: {backend_float}"
            )
    for r in graph_int8:
        if not any(f.covers(r.op) for f in families):
            problems.append(
                f"{backend} has no int8 kernel for {r.op}: node '{r.node}'"
                + (f" in '{r.module}'" if r.module else "")
                + " is int8 in the converted graph but runs in float; leave it unquantized "
                "in the quantizer's config or use a backend that has such a kernel"
            )
    return problems

