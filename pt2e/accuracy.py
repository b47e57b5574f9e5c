"""Per-layer accuracy of a quantized model against its float original: a table and a plot.

:func:`compare` logs every node of both models (the numeric debugger's loggers),
runs the same inputs through them and, for each layer (node with a debug key),
measures

* ``sqnr``: its output in the quantized model against the float model's, i.e. the
  error it *shows*, inherited from everything before it;
* ``layer_sqnr``: the quantized layer fed the float model's inputs (its weight,
  input and output quantize/dequantize re-run on them), i.e. the error it *adds*.

A layer whose ``layer_sqnr`` is close to its ``sqnr`` is where the error comes
from (``origin="layer"``); one much better on float inputs only passes on an error
made upstream (``origin="inherited"``). The table is ranked by the error each
layer adds, so a single bad layer comes first even when everything after it looks
as bad.

>>> import copy, torch
>>> from pt2e.ops import QD
>>> class M(torch.nn.Module):
...     def forward(self, x):
...         y = torch.relu(x)
...         q = QD.quantize_per_tensor.default(y, 0.5, 0, 0, 255, torch.uint8)
...         return torch.sigmoid(QD.dequantize_per_tensor.default(q, 0.5, 0, 0, 255, torch.uint8))
>>> gm = torch.export.export(M(), (torch.randn(8),)).module()
>>> report = compare(gm, gm, [torch.randn(8)])       # a model against itself: no error
>>> [(row.node, row.sqnr) for row in report.layers]
[('relu', inf), ('sigmoid', inf)]
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import pathlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg
from torch.utils._pytree import tree_leaves

from .errors import ArgumentValueError, UnsupportedOperationError
from .graph import get_attr_value, module_path
from .numeric_debugger import (
    DebugKey,
    bfs_trace_with_node_process,
    debug_key,
    extract_results_from_loggers,
    prepare_for_propagation_comparison,
    sqnr,
)
from .ops import BATCH_NORM_OPS, CHOOSE_QPARAMS_OPS, DATA_MOVEMENT_OPS, is_dequantize, is_quantize
from .report import OpRecord, Report

__all__ = ["LayerAccuracy", "AccuracyReport", "compare", "run_batches"]

aten = torch.ops.aten
# data movement (and getitem): the value is the input's, a row would repeat its producer's
_MOVES = DATA_MOVEMENT_OPS | {operator.getitem}
# "layer" when the layer's own error is at least half the noise power it shows
_OWN_MARGIN_DB = 3.0


@dataclass(frozen=True, kw_only=True)
class LayerAccuracy:
    """One row of the table. SQNRs in dB (``inf``: exact); ``None``: could not be measured."""

    node: str
    module: str
    op: str
    order: int
    sqnr: float
    layer_sqnr: float | None
    max_abs_error: float
    input_scales: tuple[float, ...] = ()
    weight_scale: tuple[float, float] | None = None
    output_scale: float | None = None
    quantized: bool = False
    origin: str = ""

    def cells(self) -> list[str]:
        def db(v: float | None) -> str:
            return "-" if v is None else "inf" if math.isinf(v) else f"{v:.1f}"

        w = "-" if self.weight_scale is None else f"{self.weight_scale[0]:.3g}..{self.weight_scale[1]:.3g}"
        return [
            self.module or "-", self.node, self.op, db(self.sqnr), db(self.layer_sqnr),
            f"{self.max_abs_error:.3g}", ", ".join(f"{s:.3g}" for s in self.input_scales) or "-",
            w, "-" if self.output_scale is None else f"{self.output_scale:.3g}", self.origin,
        ]


_HEADER = ["module", "node", "op", "sqnr_db", "layer_sqnr_db", "max_abs_error",
           "input_scales", "weight_scale", "output_scale", "origin"]


def _rank(row: LayerAccuracy) -> tuple[float, float]:
    own = row.layer_sqnr if row.layer_sqnr is not None else row.sqnr
    return (own, row.sqnr)


@dataclass(frozen=True, kw_only=True)
class AccuracyReport(Report):
    """The per-layer table, worst (largest own error) first; ``records`` say which layers
    ran on int8 inputs. Save as Markdown, CSV, JSON or a PNG plot with :meth:`save`."""

    title: str = "per-layer accuracy (worst first)"
    layers: tuple[LayerAccuracy, ...] = ()

    def worst(self, n: int = 1) -> tuple[LayerAccuracy, ...]:
        """The ``n`` layers that add the most error."""
        return self.layers[:n]

    def summary(self, limit: int | None = None) -> str:
        rows = [_HEADER] + [r.cells() for r in self.layers[:limit]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
        lines = [self.title] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                                for r in rows]
        if limit is not None and len(self.layers) > limit:
            lines.append(f"... {len(self.layers) - limit} more")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = [r.cells() for r in self.layers]
        out = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(_HEADER)
        writer.writerows(r.cells() for r in self.layers)
        return buf.getvalue()

    def to_json(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            return list(map(clean, v)) if isinstance(v, (list, tuple)) else v
        layers = [{k: clean(v) for k, v in asdict(r).items()} for r in self.layers]
        return json.dumps({"title": self.title, "layers": layers}, indent=1)

    def plot(self, path: str | pathlib.Path) -> pathlib.Path:
        """A PNG of each layer's SQNR (shown and own) in graph order. Needs matplotlib
        (``pip install 'pt2e[plot]'``)."""
        try:
            import matplotlib
            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise UnsupportedOperationError(
                "AccuracyReport.plot needs matplotlib, which is not installed; install the "
                "optional extra with `pip install 'pt2e[plot]'` (or save the table as .md/.csv/.json)"
            ) from e
        rows = sorted(self.layers, key=lambda r: r.order)
        finite = [v for r in rows for v in (r.sqnr, r.layer_sqnr) if v is not None and math.isfinite(v)]
        cap = (max(finite) if finite else 0.0) + 10.0

        def capped(v: float | None) -> float:
            return math.nan if v is None else min(v, cap)

        fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(rows)), 4.0))
        xs = range(len(rows))
        ax.plot(xs, [capped(r.sqnr) for r in rows], marker="o", label="output SQNR")
        ax.plot(xs, [capped(r.layer_sqnr) for r in rows], marker="x", linestyle="--",
                label="layer's own SQNR (float inputs)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r.module or r.node for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(self.title)
        ax.legend()
        fig.tight_layout()
        out = pathlib.Path(path)
        fig.savefig(out, format="png", dpi=100)
        plt.close(fig)
        return out

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the table (``.md``, ``.csv``, ``.json``) or the plot (``.png``) to ``path``."""
        out = pathlib.Path(path)
        writers = {".md": self.to_markdown, ".csv": self.to_csv, ".json": self.to_json}
        if out.suffix == ".png":
            return self.plot(out)
        if out.suffix not in writers:
            raise ArgumentValueError(
                f"AccuracyReport.save({str(path)!r}): unknown suffix {out.suffix!r}; use one of "
                ".md, .csv, .json, .png"
            )
        out.write_text(writers[out.suffix]())
        return out


def _as_args(batch: Any) -> tuple[Any, ...]:
    return batch if isinstance(batch, tuple) else (batch,)


def run_batches(model: torch.nn.Module, inputs: Iterable[Any]) -> list[Any]:
    """Call ``model`` on each batch (a tuple of arguments or one tensor) without gradients.

    >>> run_batches(torch.nn.Identity(), [torch.ones(1), torch.zeros(1)])
    [tensor([1.]), tensor([0.])]
    """
    with torch.no_grad():
        return [model(*_as_args(b)) for b in inputs]


def _is_qdq(node: Node) -> bool:
    if is_quantize(node) or is_dequantize(node) or node.target in CHOOSE_QPARAMS_OPS:
        return True
    return bool(node.target is operator.getitem and isinstance(node.args[0], Node)
                and node.args[0].target in CHOOSE_QPARAMS_OPS)


def _by_key(model: GraphModule) -> dict[DebugKey, list[Node]]:
    nodes: dict[DebugKey, list[Node]] = {}

    def visit(node: Node) -> None:
        key = debug_key(node)
        if key is not None:
            nodes.setdefault(key, []).append(node)

    bfs_trace_with_node_process(model, visit)
    return nodes


class _Unavailable(Exception):
    pass


def _own_output(end: Node, key: DebugKey, batch: tuple[Any, ...],
                ref: dict[DebugKey, list[Any]], b: int, top: torch.fx.Graph) -> Any:
    """``end`` evaluated with every other layer's value taken from the float model."""
    placeholders = [n for n in top.nodes if n.op == "placeholder"]
    leaves = tree_leaves(batch)
    memo: dict[Node, Any] = {}

    def ev(n: Node) -> Any:
        if n in memo:
            return memo[n]
        k = debug_key(n)
        if n.op == "get_attr":
            value = get_attr_value(n)
        elif n.op == "placeholder":
            if n.graph is not top or placeholders.index(n) >= len(leaves):
                raise _Unavailable  # a branch's input: not a model input
            i = placeholders.index(n)
            value = leaves[i]
        elif k is not None and k != key and not _is_qdq(n) and k in ref:
            value = ref[k][b]
        elif n.op == "call_function":
            args = map_arg(n.args, ev)
            kwargs = map_arg(n.kwargs, ev)
            value = n.target(*args, **kwargs)  # type: ignore[operator]
        else:
            raise _Unavailable
        memo[n] = value
        return value

    with torch.no_grad():
        return ev(end)


def _flat(values: list[Any]) -> torch.Tensor | None:
    tensors = [t for v in values for t in tree_leaves(v) if isinstance(t, torch.Tensor)]
    if not tensors or not all(t.is_floating_point() for t in tensors):
        return None
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _scales(op: Node, end: Node) -> tuple[tuple[float, ...], tuple[float, float] | None, float | None]:
    acts: list[float] = []
    weight: tuple[float, float] | None = None
    for a in op.all_input_nodes:
        if not is_dequantize(a):
            continue
        scale = a.args[1]
        if isinstance(scale, Node):
            value = get_attr_value(scale)
            if isinstance(value, torch.Tensor):  # per-channel weight scales
                weight = (float(value.min()), float(value.max()))
        elif isinstance(scale, float):
            src = a.args[0]
            if isinstance(src, Node) and (src.op == "get_attr" or (
                    is_quantize(src) and isinstance(src.args[0], Node)
                    and src.args[0].op == "get_attr")):
                weight = (scale, scale)
            else:
                acts.append(scale)
    out = float(end.args[1]) if is_dequantize(end) and isinstance(end.args[1], float) else None
    return tuple(acts), weight, out


def _origin(total: float, own: float | None) -> str:
    if math.isinf(total):
        return "exact"
    if own is None:
        return "unknown"
    return "layer" if own <= total + _OWN_MARGIN_DB else "inherited"


def compare(float_model: GraphModule, quantized_model: GraphModule,
            inputs: Iterable[Any]) -> AccuracyReport:
    """The per-layer table of ``quantized_model`` against ``float_model`` on ``inputs``.

    Both models must come from one export (``copy.deepcopy`` the exported module
    before ``prepare_pt2e``), so their nodes share debug keys; call
    :func:`~pt2e.numeric_debugger.generate_numeric_debug_handle` on the
    ``ExportedProgram`` first to include ``torch.cond`` branches. ``inputs`` is an
    iterable of batches (a tuple of arguments or one tensor). Example: see the
    module docstring.
    """
    batches = [_as_args(b) for b in inputs]
    if not batches:
        raise ArgumentValueError("compare got no inputs; pass a list of batches (tuples of "
                                 "arguments, or tensors) to run through both models")
    logged = [prepare_for_propagation_comparison(m) for m in (float_model, quantized_model)]
    for m in logged:
        run_batches(m, batches)
    ref_results, act_results = (extract_results_from_loggers(m) for m in logged)
    common = [k for k in ref_results if k in act_results]
    if not common:
        raise ArgumentValueError(
            "compare found no node of the quantized model with the debug key of a float node; "
            "both models must come from the same export: deepcopy the exported module before "
            "prepare_pt2e and pass the copy as float_model"
        )
    ref = {k: v[2] for k, v in ref_results.items()}
    float_nodes, quant_nodes = _by_key(float_model), _by_key(quantized_model)
    _fold_batch_norm_outputs(ref, float_nodes, act_results)
    order = {k: i for i, k in enumerate(float_nodes)}
    rows: list[LayerAccuracy] = []
    for key in common:
        fnode = float_nodes[key][-1]
        if fnode.target in _MOVES or _is_qdq(fnode) or fnode.target is torch.ops.higher_order.cond:
            continue
        f_all, a_all = _flat(ref[key]), _flat(act_results[key][2])
        if f_all is None or a_all is None or f_all.shape != a_all.shape:
            continue
        end = quant_nodes[key][-1]
        ops = [n for n in quant_nodes[key] if not _is_qdq(n)]
        op = ops[-1] if ops else end
        try:
            own = _flat([_own_output(end, key, batch, ref, b, quantized_model.graph) for b, batch in enumerate(batches)])
            layer_sqnr = None if own is None or own.shape != f_all.shape else float(sqnr(f_all, own))
        except _Unavailable:
            layer_sqnr = None
        total = float(sqnr(f_all, a_all))
        acts, weight, out_scale = _scales(op, end)
        quantized = any(is_dequantize(a) for a in op.all_input_nodes)
        rows.append(LayerAccuracy(
            node=fnode.name, module=module_path(fnode), op=_op_name(fnode), order=order[key],
            sqnr=total, layer_sqnr=layer_sqnr,
            max_abs_error=float((f_all - a_all).abs().max()) if f_all.numel() else 0.0,
            input_scales=acts, weight_scale=weight, output_scale=out_scale,
            quantized=quantized, origin=_origin(total, layer_sqnr),
        ))
    rows.sort(key=_rank)
    records = tuple(OpRecord(node=r.node, op=r.op, precision="int8" if r.quantized else "float",
                             module=r.module) for r in rows)
    return AccuracyReport(layers=tuple(rows), records=records)


def _fold_batch_norm_outputs(ref: dict[DebugKey, list[Any]], float_nodes: dict[DebugKey, list[Node]],
                             quantized: dict[DebugKey, Any]) -> None:
    """Compare a conv/linear whose batch norm was folded into it with the batch norm's output.

    ``prepare_pt2e`` folds ``conv -> batch_norm`` into one conv, so the quantized conv
    computes what the float model's batch norm outputs; against the float conv's own
    (pre-normalisation) output every such layer would look broken.
    """
    for key, nodes in float_nodes.items():
        bn = nodes[-1]
        if bn.target not in BATCH_NORM_OPS or key in quantized or not isinstance(bn.args[0], Node):
            continue
        producer = debug_key(bn.args[0])
        out = next((debug_key(u) for u in bn.users if u.target is operator.getitem and u.args[1] == 0), key)
        if producer is not None and producer in quantized and out in ref:
            ref[producer] = ref[out]


def _op_name(node: Node) -> str:
    return str(node.target) if hasattr(node.target, "_schema") else getattr(
        node.target, "__name__", str(node.target))
