"""Lower a converted (q/dq) graph to Inductor's oneDNN int8 kernels on x86.

Two entry points:

* :func:`lower_pt2e_quantized_to_x86` -- torchao's contract: run Inductor's
  freezing passes on the graph and return a ``GraphModule`` whose q/dq patterns
  became ``torch.ops.onednn.qconv_pointwise`` / ``qlinear_pointwise`` calls;
* :func:`compile_x86` -- one call that ``torch.compile`` s the model with
  ``freezing=True`` (Inductor only fuses q/dq into int8 kernels when weights are
  frozen constants) and reports which int8 kernels the generated code calls.
  The code is read from Inductor's ``output_code`` logging artifact (what
  ``TORCH_LOGS="output_code"`` prints) by a handler that exists only during the
  first call and only listens to the calling thread; Inductor itself is not patched.

Both change ``torch._inductor.config`` only inside ``config.patch`` scopes.

The result of :func:`compile_x86` follows :mod:`lowering.contract`;
:func:`check_x86_int8` names the graph's int8 ops the generated code ran in float.

Inductor may turn ``x + qlinear(x)`` into an in-place oneDNN "sum" post-op that
writes into ``x``; if ``x`` is a model input that is the caller's tensor.
:class:`X86CompiledModel` therefore hands the compiled code clones of the
caller's tensors (``protect_inputs=True``, the default).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

from pt2e.cpu import cpu_has_vnni
from pt2e.ops import CONV_OPS, LINEAR_OPS
from pt2e.report import OpRecord, Report

from .contract import KernelFamily, NotLoweredYetError, check_int8

__all__ = [
    "lower_pt2e_quantized_to_x86",
    "compile_x86",
    "X86CompiledModel",
    "KernelReport",
    "kernel_report",
    "check_x86_int8",
]

# extern calls in Inductor's generated code: (label, regex)
_INT8_CALLS = (
    ("onednn.qconv_pointwise", r"onednn\.qconv_pointwise\b"),
    ("onednn.qconv2d_pointwise.binary", r"onednn\.qconv2d_pointwise\.binary"),
    ("onednn.qlinear_pointwise", r"onednn\.qlinear_pointwise(?!\.binary)\b"),
    ("onednn.qlinear_pointwise.binary", r"onednn\.qlinear_pointwise\.binary"),
    ("onednn.qconv_pointwise (3d)", r"onednn\.qconv3d_pointwise"),
)
_FLOAT_CALLS = (
    ("mkldnn._convolution_pointwise", r"mkldnn\._convolution_pointwise"),
    ("convolution", r"extern_kernels\.convolution\("),
    ("mkl._mkl_linear", r"mkl\._mkl_linear"),
    ("mkldnn._linear_pointwise", r"mkldnn\._linear_pointwise"),
    ("mm", r"extern_kernels\.mm\("),
    ("addmm", r"extern_kernels\.addmm\("),
    ("bmm", r"extern_kernels\.bmm\("),
    ("baddbmm", r"extern_kernels\.baddbmm\("),
    ("scaled_dot_product_attention", r"_scaled_dot_product_\w+"),
)
# Inductor pattern-matcher counters for int8 ops that become generated C++ loops
_INT8_COUNTERS = {
    "qmaxpool2d_matcher_count": "max_pool2d (int8 loop)",
    "qcat_matcher_count": "cat (int8 loop)",
    "qreshape_matcher_count": "reshape (int8 loop)",
}


@dataclass(frozen=True, kw_only=True)
class KernelReport(Report):
    """Which int8 kernels compiled code calls, and which compute calls stayed float.

    One record per call in the generated code (``node`` is the buffer it writes),
    plus one per pattern-matcher counter for int8 ops Inductor generates as C++
    loops. ``int8`` and ``float`` count the records by kernel label.

    >>> r = kernel_report(["buf1 = torch.ops.onednn.qlinear_pointwise.default(x)",
    ...                    "extern_kernels.mm(a, b, out=c)"])
    >>> dict(r.int8), dict(r.float)
    ({'onednn.qlinear_pointwise': 1}, {'mm': 1})
    >>> r.has_int8, str(r)
    (True, 'int8: onednn.qlinear_pointwise x1; float: mm x1')
    >>> print(r.summary())
    Inductor x86: 1 int8 kernel call(s), 1 float compute call(s)
      buf1 (onednn.qlinear_pointwise)
      c (mm): float kernel in the generated code
    """

    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", (
                f"Inductor x86: {sum(self.int8.values())} int8 kernel call(s), "
                f"{sum(self.float.values())} float compute call(s)"
            ))

    @property
    def int8(self) -> Counter[str]:
        """Calls of each int8 kernel (and int8 ops generated as loops)."""
        return _by_op(self.int8_records)

    @property
    def float(self) -> Counter[str]:
        """Calls of each float compute kernel."""
        return _by_op(self.float_records)

    @property
    def has_int8(self) -> bool:
        """Whether the generated code runs any int8 kernel."""
        return bool(self.int8_records)

    def __str__(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"

        return f"int8: {fmt(self.int8)}; float: {fmt(self.float)}"


def _by_op(records: Sequence[OpRecord]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for r in records:
        counts[r.op] += r.count
    return counts


def _written_buffer(line: str, label: str) -> str:
    """The buffer a generated-code line writes (``buf3 = ...`` or ``..., out=buf3)``)."""
    if m := re.match(r"\s*(\w+)\s*=(?!=)", line):
        return m.group(1)
    if m := re.search(r"\bout=(\w+)", line):
        return m.group(1)
    return label


def kernel_report(code: Sequence[str], counters: dict[str, int] | None = None) -> KernelReport:
    """Count oneDNN int8 calls and remaining float compute calls in Inductor output code.

    ``counters``: deltas of ``torch._dynamo.utils.counters["inductor"]`` taken
    around the compilation, for int8 ops that are generated loops rather than calls.

    >>> kernel_report([], {"qmaxpool2d_matcher_count": 2}).int8
    Counter({'max_pool2d (int8 loop)': 2})
    """
    records: list[OpRecord] = []
    for module_code in code:
        for line in module_code.splitlines():
            for calls, precision in ((_INT8_CALLS, "int8"), (_FLOAT_CALLS, "float")):
                for label, pat in calls:
                    reason = "" if precision == "int8" else "float kernel in the generated code"
                    node = _written_buffer(line, label)
                    records += [
                        OpRecord(node=node, op=label, precision=precision, reason=reason)
                        for _ in re.findall(pat, line)
                    ]
    for key, label in _INT8_COUNTERS.items():
        if n := (counters or {}).get(key, 0):
            records.append(OpRecord(node=key, op=label, precision="int8", count=n))
    return KernelReport(records=tuple(records))


# Inductor's kernels that make a graph's int8 ops int8, by family (for check_x86_int8)
X86_KERNEL_FAMILIES = (
    KernelFamily(name="linear", graph_ops=LINEAR_OPS, kernels=("qlinear",)),
    KernelFamily(name="conv", graph_ops=CONV_OPS, kernels=("qconv",)),
)


def check_x86_int8(converted: GraphModule, lowered: Any) -> list[str]:
    """Name the int8 compute ops of ``converted`` that ``lowered`` (from :func:`compile_x86`)
    ran in float; ``[]`` when every one of them became a oneDNN int8 kernel.

    Inductor has int8 kernels for linear (``qlinear``) and conv (``qconv``) only;
    an int8 matmul, embedding or transposed conv in the converted graph is
    dequantized and run in float, and is named here. See :func:`lowering.check_int8`.

    A linear quantized in the graph that the generated code runs as a float ``mm``:

    >>> import torch
    >>> from types import SimpleNamespace
    >>> from pt2e.ops import QD
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("w", torch.ones(4, 4, dtype=torch.int8))
    ...     def forward(self, x):
    ...         x = QD.dequantize_per_tensor.default(x, 0.1, 0, -128, 127, torch.int8)
    ...         w = QD.dequantize_per_tensor.default(self.w, 0.1, 0, -128, 127, torch.int8)
    ...         return torch.nn.functional.linear(x, w)
    >>> gm = torch.export.export(M(), (torch.zeros(1, 4, dtype=torch.int8),)).module()
    >>> compiled = SimpleNamespace(report=kernel_report(["extern_kernels.mm(a, b, out=buf0)"]))
    >>> check_x86_int8(gm, compiled)  # doctest: +ELLIPSIS
    ["Inductor (x86) ran 1 of 1 int8 linear op(s) ... in float (int8 in the graph: 'linear'); ..."]
    """
    return check_int8(converted, lowered.report, families=X86_KERNEL_FAMILIES,
                      backend="Inductor (x86)")


def _cia_decompositions() -> dict[Any, Any]:
    # after export, only CompositeImplicitAutograd ops still need decomposing
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if not torch._export.utils._is_cia_op(op):
            del table[op]
    return table


def lower_pt2e_quantized_to_x86(
    model: GraphModule, example_inputs: tuple[torch.Tensor, ...]
) -> GraphModule:
    """Run Inductor's freezing passes on a converted model (torchao's contract).

    Returns a ``GraphModule`` in which the q/dq patterns are replaced by oneDNN
    int8 ops with prepacked weights; it runs eagerly (no code generation).

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),)).module()
    >>> lowered = lower_pt2e_quantized_to_x86(gm, (torch.randn(2, 4),))
    >>> lowered(torch.randn(2, 4)).shape
    torch.Size([2, 4])
    """
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    _warn_if_saturating(model)
    with torch.no_grad():
        lowered = (
            torch.export.export(model, tuple(example_inputs), strict=False)
            .run_decompositions(_cia_decompositions())
            .module()
        )
    graph = lowered.graph
    for node in list(graph.nodes):
        # the int8 linear patterns expect permute, not aten.t
        if node.target == torch.ops.aten.t.default:
            with graph.inserting_before(node):
                perm = graph.call_function(torch.ops.aten.permute.default, (node.args[0], [1, 0]))
            perm.meta.update(node.meta)
            node.replace_all_uses_with(perm)
            graph.erase_node(node)
    graph.lint()
    lowered.recompile()
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        freezing_passes(lowered, example_inputs)
        constant_fold(lowered)
    lowered.recompile()
    return lowered


def _warn_if_saturating(model: torch.nn.Module) -> None:
    if not isinstance(model, GraphModule) or cpu_has_vnni():
        return
    for node in model.graph.nodes:
        if (
            node.op == "call_function"
            and node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
            and node.args[-1] == torch.uint8
            and isinstance(node.args[-2], int)
            and node.args[-2] > 127
        ):
            warnings.warn(
                f"{node.name} quantizes activations to uint8 0..{node.args[-2]}, but this CPU has no "
                "VNNI: oneDNN's u8*s8 products saturate and int8 results will be wrong. Quantize with "
                "get_default_x86_inductor_quantization_config(reduce_range=True) (see "
                "quantizers.x86_needs_reduce_range()).",
                stacklevel=3,
            )
            return


# Inductor logs every output module it generates (and one loaded from its FX graph
# cache) on the "output_code" logging artifact (TORCH_LOGS="output_code"); a scoped
# handler on that logger sees the code without changing Inductor.
class _CodeLogLevel:
    """Keeps the artifact logger at DEBUG while any thread captures code, then restores it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = logging.NOTSET


_code_log_level = _CodeLogLevel()


class _OutputCodeCollector(logging.Handler):
    """Collect the Python wrapper code Inductor generates in this thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.thread = threading.get_ident()
        self.code: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # "Output code: \n%s" carries the code; "Output code written to: %s" a path
        if (
            record.thread == self.thread
            and isinstance(record.msg, str)
            and record.msg.startswith("Output code: ")
            and isinstance(record.args, tuple)
            and record.args
        ):
            self.code.append(str(record.args[0]))


@contextlib.contextmanager
def _captured_output_code() -> Iterator[list[str]]:
    """Within the block, the generated code of every Inductor compile in this thread."""
    from torch._inductor.codecache import output_code_log

    state, collector = _code_log_level, _OutputCodeCollector()
    with state.lock:
        if state.users == 0:
            # the artifact is off by default (level NOTSET under torch's WARNING, no
            # propagation): lowering the level reaches our handler only; if the user
            # turned the artifact on, the level is DEBUG already
            state.saved = output_code_log.level
            if not output_code_log.isEnabledFor(logging.DEBUG):
                output_code_log.setLevel(logging.DEBUG)
        state.users += 1
        output_code_log.addHandler(collector)
    try:
        yield collector.code
    finally:
        with state.lock:
            output_code_log.removeHandler(collector)
            state.users -= 1
            if state.users == 0:
                output_code_log.setLevel(state.saved)


def _clone_tensors(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


class X86CompiledModel:
    """A model compiled by :func:`compile_x86`; call it like the model.

    Every call runs under ``torch.no_grad()`` and the scoped ``freezing=True``
    patch (a recompilation, e.g. for a new batch size, sees the same settings).
    The first call records the generated code; :attr:`report` (also :attr:`kernels`)
    reports on it. A :class:`lowering.Lowered`.

    >>> import torch
    >>> compiled = compile_x86(torch.nn.Linear(2, 2))     # compiles lazily, on first call
    >>> compiled.kernels is None, hasattr(compiled, "report")
    (True, False)
    """

    def __init__(self, model: torch.nn.Module, *, protect_inputs: bool = True, **compile_kwargs: Any):
        self.model = model
        self.protect_inputs = protect_inputs
        self._compiled = torch.compile(model, **compile_kwargs)
        self.code: list[str] = []
        self.kernels: KernelReport | None = None

    @property
    def report(self) -> KernelReport:
        """What the generated code runs in int8 and in float (after the first call)."""
        if self.kernels is None:
            raise NotLoweredYetError(
                "this X86CompiledModel compiles on its first call and has no kernel report "
                "yet; call it once, or pass example_inputs to compile_x86"
            )
        return self.kernels

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.protect_inputs:
            args = _clone_tensors(args)
            kwargs = dict(zip(kwargs, _clone_tensors(tuple(kwargs.values()))))
        with torch._inductor.config.patch(freezing=True), torch.no_grad():
            if self.kernels is None:
                return self._first_call(args, kwargs)
            return self._compiled(*args, **kwargs)

    def _first_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from torch._dynamo.utils import counters

        if isinstance(self.model, GraphModule):
            # a fresh forward code object, so Dynamo compiles (and we see the code) even if
            # this same module was compiled before
            self.model.recompile()
        before = dict(counters["inductor"])
        with _captured_output_code() as code:
            out = self._compiled(*args, **kwargs)
        delta = {k: v - before.get(k, 0) for k, v in counters["inductor"].items()}
        self.code = list(code)
        self.kernels = kernel_report(code, delta)
        return out


def compile_x86(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | None = None,
    *,
    protect_inputs: bool = True,
    **compile_kwargs: Any,
) -> X86CompiledModel:
    """``torch.compile`` a (converted) model for x86 with freezing on, in a scoped config patch.

    With ``example_inputs`` the model is compiled (and run once) now; otherwise on
    its first call. ``compiled.kernels`` then lists the oneDNN int8 kernels the
    generated code calls and the compute ops that stayed float. Works for float
    models too (the fp32 baseline).

    >>> import torch
    >>> compiled = compile_x86(torch.nn.Linear(4, 4))
    >>> compiled.protect_inputs
    True
    """
    _warn_if_saturating(model)
    compiled = X86CompiledModel(model, protect_inputs=protect_inputs, **compile_kwargs)
    if example_inputs is not None:
        compiled(*example_inputs)
    return compiled
