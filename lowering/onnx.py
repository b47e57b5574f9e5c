"""Export a converted (q/dq) graph to ONNX in QDQ form and run it in onnxruntime.

``export_onnx`` runs: check the graph for quantization ONNX cannot hold
(:func:`lowering.onnx_checks.check_onnx_graph`), ``torch.export.export`` (with
``dynamic_shapes``), ``torch.onnx.export(..., dynamo=True)`` with our translations
(:mod:`lowering.onnx_translations`: narrow ranges clipped, dynamic quantization,
int8 ``linear`` on ``MatMulInteger``), save, and open the file in onnxruntime to
read back which layers became integer kernels. Weights are int8 initializers with
``DequantizeLinear(axis=0)`` (or ``MatMulInteger`` operands); activations float in
and out.

The result is a :class:`lowering.Lowered`: call it like the model (onnxruntime,
CPU), ``report`` lists every compute node of onnxruntime's optimized graph, and
:func:`check_onnx_int8` names the layers int8 in the converted graph that
onnxruntime ran in float. Typical use (not run here: export takes seconds)::

    onnx_model = export_onnx(converted, (x,), path="model.onnx")
    print(onnx_model.report)
    y = onnx_model(x)
    assert check_onnx_int8(converted, onnx_model) == []
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from pt2e.graph import module_path
from pt2e.ops import CONV_OPS, LINEAR_OPS
from pt2e.report import Report

from .contract import KernelFamily, LoweringError, check_affine_ops, check_int8, check_lowerable
from .onnx_checks import OnnxExportError, check_onnx_graph, onnxruntime_report
from .onnx_translations import conv_plan, translation_table

__all__ = [
    "export_onnx",
    "OnnxModel",
    "check_onnx_int8",
    "OnnxExportError",
    "ONNX_KERNEL_FAMILIES",
    "DEFAULT_OPSET",
]

#: the exporter's own opset (torchlib is written against 18: no version conversion);
#: int16 QDQ needs 21, where onnxruntime 1.32's QDQ propagation breaks int8 Q around
#: the transposes of attention (a type error at session creation), so 21 is opt-in
DEFAULT_OPSET = 18

aten = torch.ops.aten
_MATMUL_OPS = frozenset(getattr(p, o) for p in (aten.matmul, aten.bmm, aten.mm) for o in p.overloads())
ONNX_KERNEL_FAMILIES = (
    KernelFamily(name="linear", graph_ops=LINEAR_OPS,
                 kernels=("QGemm", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul")),
    KernelFamily(name="conv", graph_ops=CONV_OPS, kernels=("QLinearConv", "ConvInteger")),
    KernelFamily(name="matmul", graph_ops=_MATMUL_OPS,
                 kernels=("QLinearMatMul", "MatMulInteger")),
)


@dataclass(kw_only=True)
class OnnxModel:
    """An exported ONNX model, what onnxruntime ran in int8, and a session to run it.

    ``model_proto`` is the exported ``onnx.ModelProto`` (weights inline, even when the
    file keeps them as external data); ``path`` the ``.onnx`` file (``None`` when not
    saved). Calling it runs onnxruntime on CPU and returns tensors the caller owns.

    >>> m = OnnxModel(model_proto=None, report=Report(title="t"))
    >>> m.path is None, m.report.title
    (True, 't')
    """

    model_proto: Any
    report: Report
    path: Path | None = None
    intra_op_num_threads: int = 0
    _session: Any = field(default=None, init=False, repr=False, compare=False)

    def session(self) -> Any:
        """The onnxruntime ``InferenceSession`` (created on first use, then cached)."""
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.intra_op_num_threads
            so.log_severity_level = 3
            source = str(self.path) if self.path is not None else self.model_proto.SerializeToString()
            self._session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        return self._session

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Run the model on ``inputs``; one output gives a tensor, several a tuple."""
        sess = self.session()
        names = [i.name for i in sess.get_inputs()]
        if len(names) != len(inputs):
            raise LoweringError(
                f"the ONNX model takes {len(names)} input(s) ({', '.join(names)}), got "
                f"{len(inputs)}; pass the same positional tensors as the example inputs"
            )
        feed = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, inputs)}
        outs = [torch.from_numpy(o) for o in sess.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    @property
    def size_bytes(self) -> int:
        """Size of the serialized model (weights included)."""
        return int(self.model_proto.ByteSize())

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` as one ``.onnx`` file with its weights inline."""
        import onnx

        out = Path(path)
        onnx.save_model(self.model_proto, str(out), save_as_external_data=False)
        return out


def check_onnx_int8(converted: GraphModule, lowered: Any) -> list[str]:
    """Name the int8 conv/linear/matmul of ``converted`` that ``lowered`` (from
    :func:`export_onnx`) ran in float in onnxruntime; ``[]`` when it ran them all in int8.

    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> check_onnx_int8(gm, OnnxModel(model_proto=None, report=Report(title="t")))
    []
    """
    return check_int8(converted, lowered.report, families=ONNX_KERNEL_FAMILIES,
                      backend="onnxruntime")


def _fx_modules(model: torch.nn.Module) -> dict[str, str]:
    if not isinstance(model, GraphModule):
        return {}
    return {n.name: module_path(n) for n in model.graph.nodes if n.op == "call_function"}


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The dynamo exporter prints progress and logs torchvision warnings; keep them out."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old)


def export_onnx(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    *,
    path: str | os.PathLike[str] | None = None,
    dynamic_shapes: Any = None,
    opset: int = DEFAULT_OPSET,
    external_data: bool = False,
    integer_linear: bool = True,
    check: bool = True,
    intra_op_num_threads: int = 0,
) -> OnnxModel:
    """Export ``model`` (usually ``convert_pt2e``'s output; copied, never modified) to ONNX.

    ``path``: write the ``.onnx`` there (with ``external_data=True`` the weights go to
    ``<path>.data`` beside it, needed past 2 GB; the default keeps them inline, one
    self-contained file). ``dynamic_shapes`` as for ``torch.export.export`` (e.g.
    ``({0: torch.export.Dim("batch")},)``). ``opset`` defaults to 18 (the exporter's
    own); int16 specs need ``opset=21``. ``integer_linear=False`` keeps every
    ``linear`` and conv in plain QDQ form (onnxruntime then runs those without a
    following quantize, and int8-activation convs, in float). ``check=False`` skips
    :func:`check_onnx_graph`.
    ``intra_op_num_threads`` sets the session's threads (0: onnxruntime's default).

    A graph ONNX cannot hold is refused before anything is exported:

    >>> qd = torch.ops.quantized_decomposed
    >>> class I16(torch.nn.Module):
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.01, 0, -32768, 32767, torch.int16)
    ...         return qd.dequantize_per_tensor.default(q, 0.01, 0, -32768, 32767, torch.int16)
    >>> gm = torch.export.export(I16(), (torch.randn(2),)).module()
    >>> export_onnx(gm, (torch.randn(2),), opset=18)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowering.onnx_checks.OnnxExportError: node 'quantize_per_tensor' ... from opset 21 on; ...
    """
    check_affine_ops(model, "export_onnx")
    check_lowerable(model, "export_onnx")
    if opset < 18:
        raise OnnxExportError(
            f"export_onnx(opset={opset}): the dynamo exporter builds opset 18 and later; "
            f"pass opset=18..23 (default {DEFAULT_OPSET})"
        )
    inputs = tuple(example_inputs)
    modules = _fx_modules(model)
    if isinstance(model, GraphModule):
        model = copy.deepcopy(model)
        if check:
            check_onnx_graph(model, opset=opset)
    if external_data and path is None:
        raise OnnxExportError(
            "export_onnx(external_data=True) needs a path: the weights are written to a file "
            "beside the .onnx; pass path=..., or keep external_data=False (weights inline)"
        )

    exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    with _quiet_exporter():
        program = torch.onnx.export(
            exported, inputs, dynamo=True, opset_version=opset,
            custom_translation_table=translation_table(
                integer_linear=integer_linear,
                conv=conv_plan(exported) if integer_linear else None),
            verbose=False,
        )
    if program is None:  # pragma: no cover - the dynamo exporter always returns one
        raise LoweringError("torch.onnx.export returned no program")

    out_path = Path(path) if path is not None else None
    with tempfile.TemporaryDirectory(prefix="pt2e_onnx_") as tmp:
        target = out_path if out_path is not None else Path(tmp) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(target), external_data=external_data)
        report = onnxruntime_report(target, modules=modules)
    return OnnxModel(model_proto=program.model_proto, report=report, path=out_path,
                     intra_op_num_threads=intra_op_num_threads)
