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
:class:`X86CompiledModel` therefore reads the generated code of its first call
(:func:`written_inputs`) and, from then on, hands the compiled code clones of the
caller's tensors only if that code writes into one of its inputs
(``protect_inputs=None``, the default; ``True`` always clones, ``False`` never).

``mixed_bf16=True`` is int8-mixed-bf16 (torchao's recipe: autocast to bfloat16
around the compiled call): the q/dq patterns still become oneDNN int8 kernels,
which then write bfloat16 where their consumer is a bfloat16 op, and the
non-quantized compute (attention, softmax, activations) runs in bfloat16. It
needs a CPU with native bf16 (AVX512-BF16 or AMX, :func:`pt2e.cpu.cpu_has_bf16`)
and is refused elsewhere. The kernel report lists the bf16 ops (``report.bf16``).
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

from pt2e.cpu import cpu_has_bf16, cpu_has_vnni, cpu_model
from pt2e.errors import UnsupportedOperationError
from pt2e.ops import CONV_OPS, LINEAR_OPS
from pt2e.report import OpRecord, Report

from .contract import (
    KernelFamily,
    NotLoweredYetError,
    check_affine_ops,
    check_int8,
    quiet_torch_lowering,
)
from .x86_checks import (
    check_x86_lowerable,
    retry_without_conv_post_ops,
    rewrite_for_x86,
)

__all__ = [
    "lower_pt2e_quantized_to_x86",
    "compile_x86",
    "X86CompiledModel",
    "KernelReport",
    "kernel_report",
    "check_x86_int8",
    "written_inputs",
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
    ("scaled_dot_product_attention", r"aten\._scaled_dot_product_\w+"),
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
    loops. ``int8``, ``float`` and ``bf16`` count the records by kernel label:
    ``float`` the fp32 compute calls, ``bf16`` the compute calls on bfloat16
    buffers and the generated C++ kernels that write bfloat16 (int8-mixed-bf16).
    An int8 kernel that writes bfloat16 says so in its ``reason``.

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
        """Calls of each fp32 compute kernel."""
        return _by_op(tuple(r for r in self.float_records if r.precision == "float"))

    @property
    def bf16(self) -> Counter[str]:
        """Calls of each bfloat16 compute kernel (int8-mixed-bf16)."""
        return _by_op(tuple(r for r in self.float_records if r.precision == BF16))

    @property
    def has_int8(self) -> bool:
        """Whether the generated code runs any int8 kernel."""
        return bool(self.int8_records)

    def __str__(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"

        text = f"int8: {fmt(self.int8)}; float: {fmt(self.float)}"
        return text + (f"; bf16: {fmt(self.bf16)}" if self.bf16 else "")


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


BF16 = "bf16"
# Inductor's buffer allocations and C++ kernel signatures in the wrapper code
_ALLOC = re.compile(r"^\s*(\w+) = empty_strided_cpu\(.*\btorch\.(\w+)\)\s*$")
_CPP_KERNEL = re.compile(r"^(\w+) = async_compile\.cpp_pybinding\(\[([^\]]*)\]")
_FIRST_ARG = re.compile(r"\(\s*(?:reinterpret_tensor\(\s*)?(\w+)")


def _track_dtype(line: str, dtypes: dict[str, str]) -> None:
    """Record the dtype of the buffer ``line`` assigns: an allocation's, an extern call's
    output dtype argument (``torch.bfloat16``), else that of its first input (views, SDPA)."""
    if m := _ALLOC.match(line):
        dtypes[m.group(1)] = m.group(2)
        return
    if not (m := re.match(r"\s*(\w+)\s*=(?!=)\s*(.*)$", line)):
        return
    name, rhs = m.groups()
    if named := re.findall(r"\btorch\.(bfloat16|float16|float32|uint8|int8)\b", rhs):
        dtypes[name] = named[-1]
    elif (first := _FIRST_ARG.search(rhs) or re.match(r"(\w+)", rhs)) and first.group(1) in dtypes:
        dtypes[name] = dtypes[first.group(1)]


def _call_body(module_code: str) -> list[str]:
    """The lines of the wrapper's ``call`` function (where the kernels are called)."""
    start = module_code.find("def call(")
    if start < 0:
        return []
    end = module_code.find("\ndef get_args", start)
    return module_code[start: end if end > 0 else None].splitlines()


def _cpp_kernels(module_code: str) -> dict[str, list[str]]:
    """Each generated C++ kernel's name -> its argument types (``const float*``, ``bfloat16*``)."""
    kernels = {}
    for line in module_code.splitlines():
        if m := _CPP_KERNEL.match(line):
            kernels[m.group(1)] = [t.strip().strip("'\"") for t in m.group(2).split(",")]
    return kernels


def kernel_report(code: Sequence[str], counters: dict[str, int] | None = None) -> KernelReport:
    """Count oneDNN int8 calls and remaining float compute calls in Inductor output code.

    ``counters``: deltas of ``torch._dynamo.utils.counters["inductor"]`` taken
    around the compilation, for int8 ops that are generated loops rather than calls.
    A compute call whose first input buffer is bfloat16, and a generated C++ kernel
    that writes bfloat16, are ``bf16`` records.

    >>> kernel_report([], {"qmaxpool2d_matcher_count": 2}).int8
    Counter({'max_pool2d (int8 loop)': 2})
    >>> r = kernel_report(["\\n".join([
    ...     "def call(args):",
    ...     "    buf2 = empty_strided_cpu((8, 64), (64, 1), torch.bfloat16)",
    ...     "    buf5 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(buf2)",
    ...     "    buf9 = torch.ops.onednn.qlinear_pointwise.tensor(buf8, s, z, torch.bfloat16, 'none')"])])
    >>> r.bf16, r.int8
    (Counter({'scaled_dot_product_attention': 1}), Counter({'onednn.qlinear_pointwise': 1}))
    >>> print(r.int8_records[0])
    buf9 (onednn.qlinear_pointwise): int8 in, bf16 out
    """
    records: list[OpRecord] = []
    for module_code in code:
        dtypes: dict[str, str] = {}
        kernels = _cpp_kernels(module_code)
        for line in _call_body(module_code) or module_code.splitlines():
            if line.lstrip().startswith(("#", "assert_")):  # comments and checks name ops too
                continue
            _track_dtype(line, dtypes)
            if (m := re.match(r"\s*(\w+)\(", line)) and m.group(1) in kernels:
                types = kernels[m.group(1)]
                if any("bfloat16" in t.lower() and "const" not in t for t in types):  # at::BFloat16*
                    records.append(OpRecord(node=m.group(1), op="cpp kernel", precision=BF16,
                                            reason="generated C++ loop writing bfloat16"))
            for label, pat in _INT8_CALLS:
                reason = "int8 in, bf16 out" if "torch.bfloat16" in line else ""
                node = _written_buffer(line, label)
                records += [OpRecord(node=node, op=label, precision="int8", reason=reason)
                            for _ in re.findall(pat, line)]
            for label, pat in _FLOAT_CALLS:
                first = _FIRST_ARG.search(line)
                bf16 = first is not None and dtypes.get(first.group(1)) == "bfloat16"
                node = _written_buffer(line, label)
                records += [
                    OpRecord(node=node, op=label, precision=BF16 if bf16 else "float",
                             reason=f"{'bfloat16' if bf16 else 'float'} kernel in the generated code")
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
    check_affine_ops(model, "lower_pt2e_quantized_to_x86")
    check_x86_lowerable(model, "lower_pt2e_quantized_to_x86")
    _warn_if_saturating(model)
    model = rewrite_for_x86(model, "lower_pt2e_quantized_to_x86")
    try:
        return _freeze_for_x86(model, example_inputs)
    except Exception as e:  # Inductor's conv post-op fusion: retry with those convs fp32
        fallback = retry_without_conv_post_ops(model, e, "lower_pt2e_quantized_to_x86")
        if fallback is None:
            raise
        return _freeze_for_x86(fallback, example_inputs)


def _freeze_for_x86(model: GraphModule, example_inputs: Sequence[Any]) -> GraphModule:
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

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
    with torch._inductor.config.patch(freezing=True), torch.no_grad(), quiet_torch_lowering():
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


_INPUTS = re.compile(r"^\s*((?:\w+\s*,\s*)*\w+\s*,?)\s*=\s*args\s*$")
_ALIAS = re.compile(r"^\s*(\w+)\s*=\s*(?:reinterpret_tensor\(\s*)?(\w+)\s*(?:[,;)]|$)")
_CALL = re.compile(r"^\s*(?:\w+\s*=\s*)?([\w.]+)\((.*)\)\s*$")


def _call_args(text: str) -> list[str]:
    """The top-level arguments of a call's argument text (``reinterpret_tensor(buf0, ...)``
    counts as ``buf0``)."""
    args, depth, cur = [], 0, ""
    for ch in text + ",":
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return [m.group(1) if (m := re.match(r"reinterpret_tensor\(\s*(\w+)", a)) else a for a in args]


def written_inputs(module_code: str) -> list[str]:
    """The inputs of an Inductor wrapper module (``arg0_1``...) its ``call`` writes into.

    A write is a generated C++ kernel given the input (or a view of it) in a
    non-``const`` pointer slot, an extern kernel with an in-place ``'sum'`` post-op
    or ``out=`` given it, or an in-place method/op (``copy_``, ``add_``) on it.

    >>> code = "\\n".join([
    ...     "cpp_fused_add_0 = async_compile.cpp_pybinding(['const float*', 'float*'], '')",
    ...     "def call(self, args):",
    ...     "    arg0_1, arg1_1, = args",
    ...     "    buf0 = empty_strided_cpu((4, 16), (16, 1), torch.uint8)",
    ...     "    cpp_fused_add_0(arg0_1, buf0)",
    ...     "    torch.ops.onednn.qlinear_pointwise.binary_tensor(buf0, s, z, w, ws, wz, arg1_1, b, 'sum')",
    ...     "    return (arg1_1, )"])
    >>> written_inputs(code)
    ['arg1_1']
    """
    kernels = _cpp_kernels(module_code)
    inputs: list[str] = []
    aliases: dict[str, str] = {}  # a view of an input -> the input
    written: set[str] = set()
    for line in _call_body(module_code):
        if not inputs and (m := _INPUTS.match(line)):
            inputs = [a.strip() for a in m.group(1).split(",") if a.strip()]
            aliases = {a: a for a in inputs}
            continue
        if (m := _ALIAS.match(line)) and m.group(2) in aliases:  # buf1 = reinterpret_tensor(arg0_1, ...)
            aliases[m.group(1)] = aliases[m.group(2)]
        if m := re.search(r"\b(\w+)\.\w+_\(", line):  # an in-place method: x.copy_(...)
            if m.group(1) in aliases:
                written.add(aliases[m.group(1)])
        if m := re.search(r"\bout=(\w+)", line):
            if m.group(1) in aliases:
                written.add(aliases[m.group(1)])
        if not (m := _CALL.match(line)):
            continue
        name, args = m.group(1), _call_args(m.group(2))
        if name in kernels:  # a generated C++ kernel: its non-const pointer slots are written
            slots = [a for a, t in zip(args, kernels[name]) if t.endswith("*") and "const" not in t]
        elif "'sum'" in line or re.search(r"\.\w+_\.\w+$", name):  # in-place sum / aten.add_.Tensor
            slots = args if "'sum'" in line else args[:1]
        else:
            slots = []
        written.update(aliases[a] for a in slots if a in aliases)
    return [a for a in inputs if a in written]


class X86CompiledModel:
    """A model compiled by :func:`compile_x86`; call it like the model.

    Every call runs under ``torch.no_grad()`` and the scoped ``freezing=True``
    patch (and, with ``mixed_bf16``, bfloat16 autocast); a recompilation, e.g. for
    a new batch size, sees the same settings. The first call records the generated
    code; :attr:`report` (also :attr:`kernels`) reports on it, and
    :attr:`inputs_written` names the inputs that code writes into: later calls clone
    the caller's tensors (:attr:`clones_inputs`) only if there is one (or if
    ``protect_inputs=True``). A :class:`lowering.Lowered`.

    >>> import torch
    >>> compiled = compile_x86(torch.nn.Linear(2, 2))     # compiles lazily, on first call
    >>> compiled.kernels is None, hasattr(compiled, "report")
    (True, False)
    """

    def __init__(self, model: torch.nn.Module, *, protect_inputs: bool | None = None,
                 mixed_bf16: bool = False, **compile_kwargs: Any):
        self.model = model
        self.protect_inputs = protect_inputs
        self.mixed_bf16 = mixed_bf16
        self._compile_kwargs = compile_kwargs
        with quiet_torch_lowering():  # the first torch.compile imports Inductor
            self._compiled = torch.compile(model, **compile_kwargs)
        self.code: list[str] = []
        self.kernels: KernelReport | None = None
        # whether calls hand the compiled code clones; decided by the first call's code
        self.clones_inputs = protect_inputs is not False
        self.inputs_written: list[str] = []

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
        if self.clones_inputs:
            args = _clone_tensors(args)
            kwargs = dict(zip(kwargs, _clone_tensors(tuple(kwargs.values()))))
        # without mixed_bf16 a caller's own autocast (torchao's recipe) is left in force
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if self.mixed_bf16 else contextlib.nullcontext()
        with torch._inductor.config.patch(freezing=True), torch.no_grad(), bf16, \
                quiet_torch_lowering():
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
            try:
                out = self._compiled(*args, **kwargs)
            except Exception as e:  # Inductor's conv post-op fusion: retry with those convs fp32
                fallback = retry_without_conv_post_ops(self.model, e, "compile_x86")
                if fallback is None:
                    raise
                self.model = fallback
                with quiet_torch_lowering():
                    self._compiled = torch.compile(fallback, **self._compile_kwargs)
                code.clear()
                out = self._compiled(*args, **kwargs)
        delta = {k: v - before.get(k, 0) for k, v in counters["inductor"].items()}
        self.code = list(code)
        self.kernels = kernel_report(code, delta)
        self.inputs_written = [a for c in code for a in written_inputs(c)]
        if self.protect_inputs is None:
            # no captured code (nothing compiled, or Inductor not used): keep cloning
            self.clones_inputs = bool(self.inputs_written) or not code
        return out


def compile_x86(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | None = None,
    *,
    protect_inputs: bool | None = None,
    mixed_bf16: bool = False,
    **compile_kwargs: Any,
) -> X86CompiledModel:
    """``torch.compile`` a (converted) model for x86 with freezing on, in a scoped config patch.

    With ``example_inputs`` the model is compiled (and run once) now; otherwise on
    its first call. ``compiled.kernels`` then lists the oneDNN int8 kernels the
    generated code calls and the compute ops that stayed float. Works for float
    models too (the fp32 baseline).

    ``protect_inputs``: ``None`` (default) clones the caller's tensors only if the
    generated code writes into an input (:func:`written_inputs`, read on the first
    call, which always clones); ``True`` always clones; ``False`` never does.

    ``mixed_bf16=True``: int8-mixed-bf16. Every call runs under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``: int8 kernels stay int8 and write
    bfloat16 for bfloat16 consumers, the float ops run in bfloat16, and outputs
    may be bfloat16. Refused (:class:`pt2e.errors.UnsupportedOperationError`) on a
    CPU without native bf16 (:func:`pt2e.cpu.cpu_has_bf16`).

    >>> import torch
    >>> compiled = compile_x86(torch.nn.Linear(4, 4))
    >>> compiled.protect_inputs is None, compiled.clones_inputs   # until the first call
    (True, True)
    >>> _ = compiled(torch.randn(2, 4))
    >>> compiled.inputs_written, compiled.clones_inputs
    ([], False)
    """
    if mixed_bf16 and not cpu_has_bf16():
        raise UnsupportedOperationError(
            f"compile_x86(mixed_bf16=True) on {type(model).__name__}: this CPU "
            f"({cpu_model()}) has neither AVX512-BF16 nor AMX, so bfloat16 would run emulated "
            "and slower than fp32; call compile_x86 without mixed_bf16 (int8 kernels with "
            "fp32 float ops) on this machine"
        )
    check_affine_ops(model, "compile_x86")
    check_x86_lowerable(model, "compile_x86")
    _warn_if_saturating(model)
    if isinstance(model, GraphModule):
        model = rewrite_for_x86(model, "compile_x86")
    compiled = X86CompiledModel(model, protect_inputs=protect_inputs, mixed_bf16=mixed_bf16,
                                **compile_kwargs)
    if example_inputs is not None:
        compiled(*example_inputs)
    return compiled
