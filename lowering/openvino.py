"""Lower a converted (q/dq) graph to OpenVINO and prove which layers ran in int8.

:func:`to_openvino`: ``torch.export.export`` -> ``openvino.convert_model`` ->
``Core().compile_model(..., "CPU")``. OpenVINO's frontend turns each
``quantize -> dequantize`` pair into a FakeQuantize, which its low-precision
transformations fuse into int8 convolution / fully-connected / matmul kernels.
It ignores a lone ``dequantize`` of an int8 constant, so weights that
``convert_pt2e`` folded (``fold_quantize=True``) are re-expanded here into
``float weight -> quantize -> dequantize`` with the same qparams (the same
integers come back), on a copy: the caller's model is not changed. On the same
copy, reductions are rewritten into a form the CPU plugin computes right
(:func:`rewrite_reductions`: it computes some wrong when it fuses them with the
ops after them).

What ran is read from the compiled model's runtime graph (``get_runtime_model()``):
one :class:`OpenVINOLayer` per convolution, fully-connected layer and matmul
(matmuls fused into an attention ``Subgraph`` count one each), ``"int8"`` when its
activation input is ``u8``/``i8``, else the float type, with the weight's
precision (``i8`` weights on ``f32`` activations: weight-only compression).
:func:`check_openvino_int8` names every conv/linear/matmul the converted graph
runs in int8 that OpenVINO ran in float.

The inference precision is set explicitly (``f32`` by default, so accuracy is not
confounded by bf16 on CPUs that have it). Outputs are copied out of OpenVINO's
buffers. ``openvino`` is imported when a function is called, not with this module.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from pt2e.cpu import cpu_has_vnni, cpu_model
from pt2e.errors import ArgumentTypeError, ArgumentValueError
from pt2e.graph import copy_meta, describe_node, get_attr_value, register_constant
from pt2e.ops import CONV_OPS, LINEAR_OPS, QD, is_dequantize
from pt2e.report import OpRecord, Report

from .contract import KernelFamily, LoweringError, check_affine_ops, check_int8, check_lowerable

__all__ = [
    "to_openvino",
    "OpenVINOModel",
    "OpenVINOLayer",
    "OpenVINOReport",
    "OpenVINOLoweringError",
    "check_openvino_int8",
    "runtime_report",
    "expand_folded_weights",
    "rewrite_reductions",
    "distinct_outputs",
    "INFERENCE_PRECISIONS",
]

#: the inference precisions OpenVINO's CPU plugin takes (``INFERENCE_PRECISION_HINT``)
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
_INT_TYPES = frozenset({"u8", "i8", "u4", "i4"})
_MATMUL_OPS = frozenset({torch.ops.aten.matmul.default, torch.ops.aten.bmm.default,
                         torch.ops.aten.mm.default})
_LAYER_KIND = {
    "Convolution": "Convolution", "GroupConvolution": "Convolution", "Deconvolution": "Convolution",
    "FullyConnected": "FullyConnected", "MatMul": "MatMul",
}
#: kernel families: graph ops of the converted graph <-> runtime layer types
OPENVINO_FAMILIES = (
    KernelFamily(name="conv", graph_ops=CONV_OPS, kernels=("Convolution",)),
    KernelFamily(name="linear", graph_ops=LINEAR_OPS, kernels=("FullyConnected",)),
    KernelFamily(name="matmul", graph_ops=_MATMUL_OPS, kernels=("MatMul",)),
)


class OpenVINOLoweringError(LoweringError, RuntimeError):
    """OpenVINO could not convert or compile the exported graph (the message says where)."""


@dataclass(frozen=True, kw_only=True)
class OpenVINOLayer(OpRecord):
    """One runtime layer: ``node`` is OpenVINO's layer name, ``module`` the FX node it came from.

    ``activation`` / ``weight``: the element types of its first two inputs.

    >>> print(OpenVINOLayer(node="linear/aten.linear.default/MatMul", op="FullyConnected",
    ...                     precision="int8", module="linear", activation="u8", weight="i8"))
    linear/aten.linear.default/MatMul (FullyConnected in 'linear') u8 x i8
    """

    activation: str = ""
    weight: str = ""

    def __str__(self) -> str:
        return f"{super().__str__()} {self.activation} x {self.weight}".rstrip(" x")


@dataclass(frozen=True, kw_only=True)
class OpenVINOReport(Report):
    """The runtime layers of a compiled model, and the inference precision it was compiled with."""

    inference_precision: str = "f32"


def _fx_name(layer_name: str) -> str:
    return layer_name.split("/", 1)[0]


def _type_name(port: Any) -> str:
    return str(port.get_element_type().get_type_name())


def runtime_report(compiled: Any, *, inference_precision: str = "f32") -> OpenVINOReport:
    """Read the precision of every conv / fully-connected / matmul layer of a compiled model.

    ``compiled`` is an ``openvino.CompiledModel``. A ``Subgraph`` (OpenVINO's fused
    kernels, e.g. attention) contributes one ``MatMul`` record per matmul it absorbed,
    with the subgraph's input precision (an attention subgraph, matmul -> softmax ->
    matmul, counts two even where OpenVINO dropped one of the names).
    """
    records: list[OpRecord] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = str(info["layerType"].astype(str))
        inputs = [_type_name(op.input(i)) for i in range(op.get_input_size())]
        act = inputs[0] if inputs else ""
        weight = inputs[1] if len(inputs) > 1 else ""
        precision = "int8" if act in _INT_TYPES else act or "f32"
        name = str(op.get_friendly_name())
        kind = _LAYER_KIND.get(layer_type)
        if kind is not None:
            reason = ""
            if precision != "int8" and weight in _INT_TYPES:
                reason = f"weight-only: {weight} weights decompressed for {act} activations"
            elif precision != "int8":
                reason = f"{act} activations: no FakeQuantize OpenVINO could fuse on this input"
            records.append(OpenVINOLayer(node=name, op=kind, precision=precision, module=_fx_name(name),
                                         reason=reason, activation=act, weight=weight))
        elif layer_type == "Subgraph":
            original = str(info["originalLayersNames"].astype(str)).split(",")
            matmuls = [p for p in original if p.endswith("/MatMul") and "aten.linear" not in p]
            # OpenVINO's attention subgraph (matmul -> softmax -> matmul) keeps the name of
            # only some of the matmuls it absorbed; it always holds two
            if matmuls and any(p.endswith("/Softmax") for p in original):
                matmuls += [f"(unnamed matmul in {name})"] * max(0, 2 - len(matmuls))
            for part in matmuls:
                records.append(OpenVINOLayer(
                    node=part, op="MatMul (fused Subgraph)", precision=precision,
                    module=_fx_name(part), activation=act, weight=weight,
                    reason="" if precision == "int8" else f"fused subgraph runs on {act} inputs",
                ))
    n_int8 = sum(r.is_int8 for r in records)
    return OpenVINOReport(
        title=f"OpenVINO ({inference_precision}): {n_int8} of {len(records)} conv/linear/matmul layer(s) in int8",
        records=tuple(records), inference_precision=inference_precision,
    )


def _is_folded_weight_dq(node: Node) -> bool:
    if node.op != "call_function" or node.target not in (
        QD.dequantize_per_channel.default, QD.dequantize_per_tensor.default
    ):
        return False
    src = node.args[0]
    value = get_attr_value(src) if isinstance(src, Node) else None
    return isinstance(value, torch.Tensor) and not value.is_floating_point()


def expand_folded_weights(model: GraphModule) -> int:
    """Rewrite each ``dequantize(int8 constant)`` as ``dequantize(quantize(float constant))``, in place.

    The float constant is the dequantized weight, so quantizing it gives back the
    same integers. Returns how many weights were expanded.

    >>> import torch
    >>> from pt2e import convert_pt2e, prepare_pt2e
    >>> from quantizers import OpenVINOQuantizer
    >>> m = torch.nn.Linear(4, 4).eval()
    >>> x = torch.randn(2, 4)
    >>> prepared = prepare_pt2e(torch.export.export(m, (x,)).module(), OpenVINOQuantizer())
    >>> _ = prepared(x)
    >>> folded = convert_pt2e(prepared)   # fold_quantize=True: an int8 weight constant
    >>> before = folded(x)
    >>> expand_folded_weights(folded), torch.equal(folded(x), before)
    (1, True)
    """
    graph = model.graph
    expanded = 0
    for dq in list(graph.nodes):
        if not _is_folded_weight_dq(dq):
            continue
        const = dq.args[0]
        if not isinstance(const, Node):  # _is_folded_weight_dq checked it
            continue
        qargs = list(dq.args[1:])
        with torch.no_grad():
            values = [get_attr_value(a) if isinstance(a, Node) else a for a in qargs]
            weight = dq.target(get_attr_value(const), *values)
        name = register_constant(model, f"{const.target}_float".replace(".", "_"), weight.detach())
        with graph.inserting_before(dq):
            w = graph.get_attr(name)
            q_op = (QD.quantize_per_channel.default if dq.target == QD.dequantize_per_channel.default
                    else QD.quantize_per_tensor.default)
            q = graph.call_function(q_op, (w, *qargs))
        copy_meta(w, const)
        copy_meta(q, dq)
        dq.replace_input_with(const, q)
        if not const.users:
            graph.erase_node(const)
        expanded += 1
    if expanded:
        graph.lint()
        model.recompile()
    return expanded


#: reductions OpenVINO's CPU plugin fuses with the ops after them (see rewrite_reductions)
_REDUCTIONS = frozenset({torch.ops.aten.mean.dim, torch.ops.aten.sum.dim_IntList,
                         torch.ops.aten.amax.default, torch.ops.aten.amin.default})


def _fused_reduction(node: Node) -> tuple[Node, list[int], bool, int] | None:
    """``(input, axes, keepdim, rank)`` of a reduction :func:`rewrite_reductions` rewrites, else None."""
    if node.op != "call_function" or node.target not in _REDUCTIONS:
        return None
    src = node.args[0]
    val = src.meta.get("val") if isinstance(src, Node) else None
    if not isinstance(src, Node) or not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    rank = val.dim()
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims):
        return None
    axes = sorted({d % rank for d in dims})
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not isinstance(keepdim, bool) or (keepdim and not (rank == 3 and 2 in axes)):
        return None  # kept-dim reductions are left alone but over the last axis of 3-D (docs/openvino.md)
    return src, axes, keepdim, rank


def rewrite_reductions(model: GraphModule) -> int:
    """Rewrite each mean / sum / amax / amin that OpenVINO's CPU plugin may compute wrong as
    one it computes right, in place; returns how many were rewritten.

    The plugin (2026.4, seen on an AVX2-only CPU) fuses a reduction with the ops after
    it and computes some of the fused ops wrong (below 0 dB, float models too; cf.
    openvinotoolkit/openvino#23616): ``x.mean(dim=2)`` of an ``(N, C, L)`` tensor
    then a batch norm or a bias, ``x * (x.mean(-1, keepdim=True) + b)``, a global
    average pool then a quantize then an add of another pooled tensor. Every case we
    found is computed right when the reduction keeps its dims and a squeeze drops them,
    and when a kept-dim reduction over the last axis of a 3-D tensor reduces its 4-D
    view ``x.unsqueeze(-1)`` instead; so every reduction that drops dims, and every
    such 3-D one, is rewritten that way. The values do not change in PyTorch.

    >>> import torch
    >>> class Head(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x.mean(dim=2) * torch.tensor([1.0, 2.0]) + 1.0
    >>> x = torch.randn(3, 2, 5)
    >>> gm = torch.export.export(Head(), (x,)).module()
    >>> before = gm(x)
    >>> rewrite_reductions(gm), torch.allclose(gm(x), before)
    (1, True)
    """
    graph = model.graph
    rewritten = 0
    for node in list(graph.nodes):
        found = _fused_reduction(node)
        if found is None:
            continue
        src, axes, keepdim, rank = found
        if rank == 3 and 2 in axes:  # the 4-D view: (N, C, L) -> (N, C, L, 1)
            with graph.inserting_before(node):
                src = graph.call_function(torch.ops.aten.unsqueeze.default, (src, 3))
            axes = [*axes, 3]
        node.args = (src, axes, True, *node.args[3:])
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dim", "keepdim")}
        drop = [3] if keepdim else axes
        with graph.inserting_after(node):
            squeezed = graph.call_function(torch.ops.aten.squeeze.dims, (node, drop))
        node.replace_all_uses_with(squeezed, delete_user_cb=lambda user, s=squeezed: user is not s)
        rewritten += 1
    if rewritten:
        graph.lint()
        model.recompile()
    return rewritten


def _repeated_outputs(model: GraphModule) -> list[tuple[int, Node]]:
    """``(position, node)`` of every graph output that repeats an earlier one."""
    output = next((n for n in model.graph.nodes if n.op == "output"), None)
    if output is None:
        return []
    seen: set[Node] = set()
    found = []
    for i, leaf in enumerate(tree_leaves(output.args[0])):
        if isinstance(leaf, Node):
            if leaf in seen:
                found.append((i, leaf))
            seen.add(leaf)
    return found


def distinct_outputs(model: GraphModule) -> int:
    """Give every repeated graph output its own node, in place; returns how many were repeated.

    OpenVINO's PyTorch frontend (2026.4) cannot convert a program that returns the same
    tensor twice (``return y, y``; float models too): ``Tensor name is not a number:
    relu:0``. A ``clone`` does not help (the frontend drops it), but any real op does, so
    each repeat becomes an identity ``permute`` (it keeps dtype and shape, dynamic ones
    too). Found by the fuzzer (tests/fuzz): a model whose second output was tapped where
    a dead branch left the value unchanged. The values do not change in PyTorch.

    >>> import torch
    >>> class Twice(torch.nn.Module):
    ...     def forward(self, x):
    ...         y = torch.relu(x)
    ...         return y, y
    >>> gm = torch.export.export(Twice(), (torch.randn(2, 3),)).module()
    >>> x = torch.randn(2, 3)
    >>> before = gm(x)
    >>> distinct_outputs(gm), [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    (1, ['relu.default', 'permute.default'])
    >>> all(torch.equal(a, b) for a, b in zip(before, gm(x)))
    True
    """
    repeats = _repeated_outputs(model)
    if not repeats:
        return 0
    output = next(n for n in model.graph.nodes if n.op == "output")
    leaves, spec = tree_flatten(output.args[0])
    for i, node in repeats:
        val = node.meta.get("val")
        with model.graph.inserting_before(output):
            if isinstance(val, torch.Tensor):
                copy_node = model.graph.call_function(torch.ops.aten.permute.default, (node, list(range(val.dim()))))
            else:  # no shape recorded: a multiply by 1 keeps a number's or a tensor's dtype
                copy_node = model.graph.call_function(torch.ops.aten.mul.Tensor, (node, 1))
        copy_meta(copy_node, node, value=True)
        leaves[i] = copy_node
    output.args = (tree_unflatten(leaves, spec),)
    model.graph.lint()
    model.recompile()
    return len(repeats)


class OpenVINOModel:
    """A model compiled by OpenVINO: call it like the PyTorch model; ``report`` says what ran in int8.

    ``compiled`` is the ``openvino.CompiledModel``; ``exported`` the
    ``torch.export.ExportedProgram`` it was converted from; ``model`` the
    ``openvino.Model`` (what :meth:`save` writes as IR).
    """

    def __init__(self, compiled: Any, exported: Any, report: OpenVINOReport,
                 model: Any = None) -> None:
        self.compiled = compiled
        self.exported = exported
        self.model = model
        self._report = report
        self._request = compiled.create_infer_request()
        self._out_spec = exported.call_spec.out_spec

    @property
    def report(self) -> OpenVINOReport:
        return self._report

    def __call__(self, *args: Any) -> Any:
        flat = [a.detach().contiguous().numpy() if isinstance(a, torch.Tensor) else a
                for a in torch.utils._pytree.tree_leaves(args)]
        results = self._request.infer(flat)
        # OpenVINO reuses its output buffers on the next call: hand out copies
        outs = [torch.from_numpy(results[o].copy()) for o in self.compiled.outputs]
        if self._out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return torch.utils._pytree.tree_unflatten(outs, self._out_spec)

    def __repr__(self) -> str:
        return f"OpenVINOModel({self._report.title})"

    def save(self, path: str | Path) -> Path:
        """Write the OpenVINO IR (``path`` with suffix ``.xml``, weights beside it in ``.bin``).

        Weights are kept as they are (no fp16 compression), so the IR compiles to the
        same int8 kernels; load it with ``openvino.Core().read_model(path)``.
        """
        import openvino as ov

        if self.model is None:
            raise OpenVINOLoweringError(
                "this OpenVINOModel was built without its openvino.Model; use to_openvino(...) "
                "to get one that can be saved"
            )
        out = Path(path).with_suffix(".xml")
        ov.save_model(self.model, str(out), compress_to_fp16=False)
        return out


def full_range_weights(model: GraphModule) -> list[Node]:
    """Conv/linear nodes with a quantized input whose int8 weight uses more than the overflow
    fix's ``-63..63``.

    On a CPU without VNNI, OpenVINO's int8 kernels sum u8*s8 pairs in int16, which
    such weights can saturate (see :class:`quantizers.OpenVINOQuantizer`'s ``overflow_fix``).
    A weight-only layer (float input) never meets those kernels: OpenVINO decompresses its
    weight and computes in float, so it is not listed.

    >>> import torch
    >>> from pt2e import convert_pt2e, prepare_pt2e
    >>> from quantizers import OpenVINOQuantizer
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1)).eval()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> prepared = prepare_pt2e(torch.export.export(m, (x,)).module(), OpenVINOQuantizer())
    >>> _ = prepared(x)
    >>> [n.name for n in full_range_weights(convert_pt2e(prepared, fold_quantize=False))]
    ['conv2d_1']
    """
    found = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in CONV_OPS | LINEAR_OPS or len(node.args) < 2:
            continue
        dq = node.args[1]
        if not (isinstance(dq, Node) and is_dequantize(dq)) or len(dq.args) < 6 or not is_dequantize(node.args[0]):
            continue
        qmin, qmax, dtype = dq.args[-3], dq.args[-2], dq.args[-1]
        if dtype == torch.int8 and isinstance(qmin, int) and isinstance(qmax, int) and max(-qmin, qmax) > 64:
            found.append(node)
    return found


def _warn_if_weights_saturate(model: GraphModule) -> None:
    found = full_range_weights(model)
    if found:
        names = ", ".join(describe_node(n) for n in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        warnings.warn(
            f"to_openvino: this CPU ({cpu_model()}) has no VNNI, and {len(found)} int8 layer(s) "
            f"have full-range weights ({names}): OpenVINO's int8 kernels sum u8*s8 pairs in "
            "int16 here and can saturate (measured: 24 dB instead of 57 dB). Quantize with "
            "OpenVINOQuantizer(...).set_global(get_openvino_quantization_config(overflow_fix="
            "'enable')), or OpenVINOQuantizer(overflow_fix='enable')",
            stacklevel=3,
        )


def to_openvino(
    model: GraphModule,
    example_inputs: Sequence[Any],
    *,
    inference_precision: str = "f32",
    device: str = "CPU",
    num_threads: int | None = None,
    config: dict[str, Any] | None = None,
) -> OpenVINOModel:
    """Compile a converted model with OpenVINO; the result follows :mod:`lowering.contract`.

    ``inference_precision``: ``"f32"`` (default), ``"bf16"`` or ``"f16"``; layers
    OpenVINO runs in int8 are unaffected, the float ones run in this precision.
    ``num_threads`` sets ``INFERENCE_NUM_THREADS``; ``config`` passes further
    OpenVINO properties (it overrides the others).

    Not run here (it compiles)::

        converted = convert_pt2e(prepared, fold_quantize=False)
        ov_model = to_openvino(converted, example_inputs)
        print(ov_model.report)                 # one line per conv / linear / matmul layer
        assert check_openvino_int8(converted, ov_model) == []
        y = ov_model(*example_inputs)          # a torch.Tensor the caller owns
    """
    check_affine_ops(model, "to_openvino")
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(
            f"to_openvino expects the converted torch.fx.GraphModule (or an nn.Module), got "
            f"{type(model).__name__}"
        )
    check_lowerable(model, "to_openvino")
    if isinstance(model, GraphModule) and not cpu_has_vnni():
        _warn_if_weights_saturate(model)
    if inference_precision not in INFERENCE_PRECISIONS:
        raise ArgumentValueError(
            f"to_openvino(inference_precision={inference_precision!r}): pass one of "
            f"{', '.join(INFERENCE_PRECISIONS)}"
        )
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ArgumentValueError(f"to_openvino(num_threads={num_threads!r}): pass a positive int or None")
    import openvino as ov

    if isinstance(model, GraphModule) and (any(
        _is_folded_weight_dq(n) or _fused_reduction(n) is not None for n in model.graph.nodes
    ) or _repeated_outputs(model)):
        model = copy.deepcopy(model)  # the caller's model is not changed
        expand_folded_weights(model)
        rewrite_reductions(model)
        distinct_outputs(model)
    args = tuple(example_inputs)
    try:
        exported = torch.export.export(model, args)
    except Exception as e:
        raise OpenVINOLoweringError(
            f"to_openvino: torch.export.export of the converted model failed ({type(e).__name__}: "
            f"{e}); pass the GraphModule convert_pt2e returned and example inputs it accepts"
        ) from e
    try:
        ov_model = ov.convert_model(exported)
    except Exception as e:
        raise OpenVINOLoweringError(
            f"to_openvino: openvino.convert_model could not convert the exported graph: {e}. "
            "OpenVINO needs float weight -> quantize -> dequantize chains (convert_pt2e(..., "
            "fold_quantize=False)) and standard quantized_decomposed ops"
        ) from e
    properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision}
    if num_threads is not None:
        properties["INFERENCE_NUM_THREADS"] = num_threads
    properties.update(config or {})
    try:
        compiled = ov.Core().compile_model(ov_model, device, properties)
    except Exception as e:
        raise OpenVINOLoweringError(
            f"to_openvino: OpenVINO could not compile the model for device {device!r}: {e}"
        ) from e
    report = runtime_report(compiled, inference_precision=inference_precision)
    return OpenVINOModel(compiled, exported, report, model=ov_model)


def check_openvino_int8(converted: GraphModule, lowered: Any) -> list[str]:
    """Name every conv / linear / matmul ``converted`` runs in int8 that OpenVINO ran in float.

    ``lowered`` is what :func:`to_openvino` returned (or anything with a ``report``).

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),)).module()
    >>> class Float:
    ...     report = Report(title="t", records=(OpRecord(node="fc", op="FullyConnected", precision="f32"),))
    >>> check_openvino_int8(gm, Float())   # nothing in the graph is int8, so nothing is missing
    []
    """
    return check_int8(converted, lowered.report, families=OPENVINO_FAMILIES, backend="OpenVINO")
