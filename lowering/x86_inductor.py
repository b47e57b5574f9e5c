"""Lower a converted (q/dq) graph to Inductor's oneDNN int8 kernels on x86.

Two entry points:

* :func:`lower_pt2e_quantized_to_x86` -- torchao's contract: run Inductor's
  freezing passes on the graph and return a ``GraphModule`` whose q/dq patterns
  became ``torch.ops.onednn.qconv_pointwise`` / ``qlinear_pointwise`` calls;
* :func:`compile_x86` -- one call that ``torch.compile`` s the model with
  ``freezing=True`` (Inductor only fuses q/dq into int8 kernels when weights are
  frozen constants) and reports which int8 kernels the generated code calls.

Both change ``torch._inductor.config`` only inside ``config.patch`` scopes.

Inductor may turn ``x + qlinear(x)`` into an in-place oneDNN "sum" post-op that
writes into ``x``; if ``x`` is a model input that is the caller's tensor.
:class:`X86CompiledModel` therefore hands the compiled code clones of the
caller's tensors (``protect_inputs=True``, the default).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch.fx import GraphModule

__all__ = [
    "lower_pt2e_quantized_to_x86",
    "compile_x86",
    "X86CompiledModel",
    "KernelReport",
    "kernel_report",
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
    "qmaxpool2d_matcher_count": "int8 max_pool2d",
    "qcat_matcher_count": "int8 cat",
    "qreshape_matcher_count": "int8 reshape",
}


@dataclass
class KernelReport:
    """Which int8 kernels compiled code calls, and which compute calls stayed float.

    >>> r = kernel_report(["buf1 = torch.ops.onednn.qlinear_pointwise.default(x)",
    ...                    "extern_kernels.mm(a, b, out=c)"])
    >>> dict(r.int8), dict(r.float)
    ({'onednn.qlinear_pointwise': 1}, {'mm': 1})
    >>> r.has_int8
    True
    """

    int8: Counter[str] = field(default_factory=Counter)
    float: Counter[str] = field(default_factory=Counter)

    @property
    def has_int8(self) -> bool:
        return bool(self.int8)

    def __str__(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"

        return f"int8: {fmt(self.int8)}; float: {fmt(self.float)}"


def kernel_report(code: Sequence[str], counters: dict[str, int] | None = None) -> KernelReport:
    """Count oneDNN int8 calls and remaining float compute calls in Inductor output code.

    ``counters``: deltas of ``torch._dynamo.utils.counters["inductor"]`` taken
    around the compilation, for int8 ops that are generated loops rather than calls.
    """
    report = KernelReport()
    text = "\n".join(code)
    for label, pat in _INT8_CALLS:
        if n := len(re.findall(pat, text)):
            report.int8[label] += n
    for label, pat in _FLOAT_CALLS:
        if n := len(re.findall(pat, text)):
            report.float[label] += n
    for key, label in _INT8_COUNTERS.items():
        if n := (counters or {}).get(key, 0):
            report.int8[label] += n
    return report


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
    if not isinstance(model, GraphModule) or _cpu_has_vnni():
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


def _cpu_has_vnni() -> bool:
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(is_vnni()) if is_vnni is not None else True


def _clone_tensors(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


class X86CompiledModel:
    """A model compiled by :func:`compile_x86`; call it like the model.

    Every call runs under ``torch.no_grad()`` and the scoped ``freezing=True``
    patch (a recompilation, e.g. for a new batch size, sees the same settings).
    The first call records the generated code; :attr:`kernels` reports on it.

    >>> import torch
    >>> compiled = compile_x86(torch.nn.Linear(2, 2))     # compiles lazily, on first call
    >>> compiled.kernels is None
    True
    """

    def __init__(self, model: torch.nn.Module, *, protect_inputs: bool = True, **compile_kwargs: Any):
        self.model = model
        self.protect_inputs = protect_inputs
        self._compiled = torch.compile(model, **compile_kwargs)
        self.code: list[str] = []
        self.kernels: KernelReport | None = None

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
        from torch._inductor.graph import GraphLowering

        if isinstance(self.model, GraphModule):
            # a fresh forward code object, so Dynamo compiles (and we see the code) even if
            # this same module was compiled before
            self.model.recompile()
        before = dict(counters["inductor"])
        code: list[str] = []
        with mock.patch.object(GraphLowering, "save_output_code", code.append):
            out = self._compiled(*args, **kwargs)
        delta = {k: v - before.get(k, 0) for k, v in counters["inductor"].items()}
        self.code = code
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
