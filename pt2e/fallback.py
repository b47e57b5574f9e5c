"""Accuracy-aware fallback: keep the fewest, most sensitive layers float until a target is met.

:func:`accuracy_aware_fallback` quantizes the whole model once, ranks the int8
layers by the error each one *adds* (``layer_sqnr`` of :func:`pt2e.accuracy.compare`:
the quantized layer fed float inputs, so a layer that only inherits an upstream
error is not blamed), then keeps the top ``k`` float for growing ``k`` (1, 2, 4, ...
until the target is met, then a bisection between the last miss and the first
hit). Each try is one prepare + calibrate + convert of the user's quantizer, so
the cost is ``1 + O(2 log2 n)`` calibration runs for ``n`` int8 layers instead of
one per subset, and it is stated in the report (``calibration_runs``).

Layers are kept float by :class:`KeepFloatQuantizer`, which wraps any
:class:`~pt2e.quantizer.Quantizer`: it lets the wrapped quantizer annotate, then
clears the annotation of the chosen nodes (found by numeric debug handle) and of
any annotation that shares or derives its qparams from them. It needs nothing but
the quantizer contract, so it works for every backend (a ``TableQuantizer`` user
could call ``set_module_name(name, None)`` instead; the wrapper also covers
single ops that are not modules, like a ``matmul``).

>>> import torch
>>> from pt2e.quantizer import Quantizer
>>> class Nothing(Quantizer):          # a quantizer that quantizes nothing...
...     def annotate(self, model): return model
...     def validate(self, model): pass
>>> gm = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),)).module()
>>> result = accuracy_aware_fallback(gm, Nothing(), [torch.randn(2, 4)], target_sqnr=30.0)
>>> result.report.met, result.report.calibration_runs, len(result.report.records)  # ...is exact
(True, 1, 0)
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_leaves

from .accuracy import compare, run_batches
from .errors import ArgumentTypeError, ArgumentValueError
from .numeric_debugger import _handle as _debug_handle
from .numeric_debugger import generate_numeric_debug_handle, sqnr
from .progress import Progress
from .quantize_pt2e import convert_pt2e, prepare_pt2e
from .quantizer.annotation import clear_annotation, get_annotation
from .quantizer.base import Quantizer
from .report import OpRecord, Report, quantization_report

__all__ = ["KeepFloatQuantizer", "FallbackReport", "FallbackResult", "accuracy_aware_fallback"]

log = logging.getLogger(__name__)


def _referenced_nodes(spec: Any) -> list[Node]:
    """Nodes a shared/derived spec points at (``edge_or_node`` / ``derived_from``)."""
    refs: list[Any] = []
    if spec is None:
        return []
    if getattr(spec, "edge_or_node", None) is not None:
        refs.append(spec.edge_or_node)
    refs.extend(getattr(spec, "derived_from", None) or [])
    out: list[Node] = []
    for r in refs:
        out.extend(x for x in (r if isinstance(r, tuple) else (r,)) if isinstance(x, Node))
    return out


class KeepFloatQuantizer(Quantizer):
    """``quantizer``, except that the nodes whose numeric debug handle is in ``keep_float``
    stay float.

    >>> import torch
    >>> from pt2e.quantizer import Quantizer, annotate_output_qspec
    >>> class Tag(Quantizer):                      # "annotates" every linear
    ...     def annotate(self, model):
    ...         for n in model.graph.nodes:
    ...             if n.target == torch.ops.aten.linear.default:
    ...                 annotate_output_qspec(n, None)
    ...         return model
    ...     def validate(self, model): pass
    >>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
    ...                          (torch.randn(1, 2),)).module()
    >>> generate_numeric_debug_handle(gm)
    >>> first = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    >>> _ = KeepFloatQuantizer(Tag(), {first.meta["custom"]["numeric_debug_handle"]}).annotate(gm)
    >>> [get_annotation(n) is None for n in gm.graph.nodes if n.op == "call_function"]
    [True, False]
    """

    def __init__(self, quantizer: Quantizer, keep_float: Iterable[int]) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.keep_float = frozenset(keep_float)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return self.quantizer.transform_for_annotation(model)

    def annotate(self, model: GraphModule) -> GraphModule:
        model = self.quantizer.annotate(model) or model
        cleared = {n for n in model.graph.nodes if _debug_handle(n) in self.keep_float}
        for n in cleared:
            clear_annotation(n)
        # an annotation sharing or deriving qparams from a cleared one cannot stand alone
        changed = True
        while changed:
            changed = False
            for n in model.graph.nodes:
                ann = get_annotation(n)
                if ann is None or n in cleared:
                    continue
                specs = list((getattr(ann, "input_qspec_map", None) or {}).values())
                specs.append(getattr(ann, "output_qspec", None))
                if any(r in cleared for s in specs for r in _referenced_nodes(s)):
                    clear_annotation(n)
                    cleared.add(n)
                    changed = True
        return model

    def validate(self, model: GraphModule) -> None:
        self.quantizer.validate(model)

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: Any) -> None:
        self.quantizer.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)


@dataclass(frozen=True, kw_only=True)
class FallbackReport(Report):
    """What stayed float (``records``: one per layer kept float, with its own SQNR) and
    what it cost: calibration runs, evaluations, model size, int8 compute ops."""

    title: str = ""
    target: str = ""
    met: bool = False
    achieved: float = math.nan
    full_int8: float = math.nan
    int8_layers: int = 0
    candidates: int = 0
    calibration_runs: int = 0
    evaluations: int = 0
    size_bytes: int = 0
    float_size_bytes: int = 0
    trials: tuple[tuple[int, float], ...] = ()
    passes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.title:
            verdict = "met" if self.met else "NOT met"
            after = f" after {', '.join(self.passes)}" if self.passes else ""
            object.__setattr__(self, "title", (
                f"accuracy-aware fallback{after}: target {self.target} {verdict} "
                f"({self.achieved:.4g}; full int8 {self.full_int8:.4g}) with "
                f"{len(self.records)} of {self.candidates} int8 layers kept float; "
                f"{self.int8_layers} int8 compute ops, {self.size_bytes / 1e6:.2f} MB "
                f"(float {self.float_size_bytes / 1e6:.2f} MB); cost {self.calibration_runs} "
                f"calibration runs, {self.evaluations} evaluations"))


class FallbackResult(NamedTuple):
    """The converted model and the :class:`FallbackReport`."""

    model: GraphModule
    report: FallbackReport


def _size_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _output_sqnr(ref: list[Any], out: list[Any]) -> float:
    r = torch.cat([t.reshape(-1).double() for t in tree_leaves(ref) if isinstance(t, torch.Tensor)])
    o = torch.cat([t.reshape(-1).double() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
    return float(sqnr(r, o))


def _pass_name(p: Any) -> str:
    alpha = getattr(p, "alpha", None)
    name = type(p).__name__ if not callable(p) or hasattr(p, "call") else getattr(p, "__name__", type(p).__name__)
    return f"{name}(alpha={alpha:g})" if isinstance(alpha, float) else name


def accuracy_aware_fallback(
    model: GraphModule,
    quantizer: Quantizer,
    calibration_data: Sequence[Any],
    *,
    target_sqnr: float | None = None,
    metric: Callable[[torch.nn.Module], float] | None = None,
    tolerance: float | None = None,
    eval_data: Sequence[Any] | None = None,
    max_float_layers: int | None = None,
    measure_top: int = 0,
    passes: Sequence[Callable[[GraphModule], Any]] = (),
    progress: bool = True,
) -> FallbackResult:
    """Quantize ``model`` with ``quantizer``, keeping the fewest most-sensitive layers float
    until the target is met.

    ``model`` is the exported float module (``torch.export.export(...).module()``;
    it is not changed). ``calibration_data`` and ``eval_data`` (default: the
    calibration data) are lists of batches, each a tuple of arguments or one tensor.
    The target is either ``target_sqnr`` (dB, the model outputs on ``eval_data``
    against the float model's) or ``metric`` (called on a model, higher is better)
    with ``tolerance``: met when ``metric(quantized) >= metric(float) - tolerance``.
    ``max_float_layers`` caps how many layers may stay float. If even that misses the
    target, the best try is returned with ``report.met`` False. ``measure_top=m``
    re-ranks the ``m`` most sensitive layers by the score each one alone reaches
    when kept float (``m`` more calibration runs): the own-error ranking says where
    error is made, the measured one how much of it reaches the metric. ``passes`` are
    float-model passes run (in order, on a copy) before the search, e.g.
    ``[SmoothQuant(calibration_data, alpha=0.75)]`` (see ``docs/algorithms.md``): the
    layers are then ranked and kept float on the smoothed model, and the report's
    ``passes`` names them. ``progress`` draws a bar of the tries on a terminal
    (:mod:`pt2e.progress`). Example: see the module docstring.
    """
    if (target_sqnr is None) == (metric is None):
        raise ArgumentValueError(
            "accuracy_aware_fallback needs exactly one target: target_sqnr=<dB> or "
            "metric=<callable(model) -> float> with tolerance=<allowed drop>")
    if metric is not None and tolerance is None:
        raise ArgumentValueError(
            "accuracy_aware_fallback(metric=...) needs tolerance=<how much lower than the float "
            "model's metric the quantized model may score>, e.g. tolerance=0.01")
    if not isinstance(model, GraphModule):
        raise ArgumentTypeError(
            f"accuracy_aware_fallback expects the exported float model, got "
            f"{type(model).__name__}; pass torch.export.export(model, example_args).module()")
    calibration = list(calibration_data)
    evaluation = list(eval_data) if eval_data is not None else calibration
    if not calibration:
        raise ArgumentValueError("accuracy_aware_fallback got no calibration_data; pass a list "
                                 "of batches (tuples of arguments, or tensors)")
    base = copy.deepcopy(model)
    for p in passes:
        p(base)
    generate_numeric_debug_handle(base)
    cost = {"calibration_runs": 0, "evaluations": 0}
    float_outputs = run_batches(base, evaluation)

    def score(m: torch.nn.Module) -> float:
        cost["evaluations"] += 1
        if metric is not None:
            return float(metric(m))
        return _output_sqnr(float_outputs, run_batches(m, evaluation))

    if metric is not None:
        threshold = score(base) - float(tolerance)  # type: ignore[arg-type]
        target = f"metric >= {threshold:.4g}"
    else:
        threshold = float(target_sqnr)  # type: ignore[arg-type]
        target = f"output SQNR >= {threshold:g} dB"

    def quantize(keep: frozenset[int]) -> GraphModule:
        cost["calibration_runs"] += 1
        q = KeepFloatQuantizer(quantizer, keep) if keep else quantizer
        prepared = prepare_pt2e(copy.deepcopy(base), q)
        run_batches(prepared, calibration)
        return convert_pt2e(prepared)

    with Progress("accuracy-aware fallback", unit="try", enabled=progress) as bar:
        full = quantize(frozenset())
        full_score = score(full)
        bar.advance(f"all int8: {full_score:.4g}")
        trials: dict[int, tuple[float, GraphModule]] = {0: (full_score, full)}
        ranked: list[tuple[int, OpRecord]] = []
        if full_score < threshold:
            handles = {n.name: _debug_handle(n) for n in base.graph.nodes}
            for row in compare(base, full, evaluation).layers:  # worst own error first
                h = handles.get(row.node)
                if row.quantized and h is not None:
                    own = "-" if row.layer_sqnr is None else f"{row.layer_sqnr:.1f} dB"
                    ranked.append((h, OpRecord(
                        node=row.node, op=row.op, precision="float", module=row.module,
                        reason=f"kept float by accuracy-aware fallback (layer SQNR {own} in int8)")))
        if measure_top > 0 and ranked:
            top = ranked[:measure_top]
            gain = {}
            for h, _ in top:
                cost_model = quantize(frozenset({h}))
                gain[h] = score(cost_model)
                bar.advance(f"one layer float: {gain[h]:.4g}")
            ranked = sorted(top, key=lambda hr: -gain[hr[0]]) + ranked[measure_top:]
        limit = len(ranked) if max_float_layers is None else min(len(ranked), max_float_layers)

        def attempt(k: int) -> bool:
            if k not in trials:
                m = quantize(frozenset(h for h, _ in ranked[:k]))
                trials[k] = (score(m), m)
                log.info("fallback: %d layers float -> %.5g", k, trials[k][0])
                bar.advance(f"{k} layers float: {trials[k][0]:.4g}")
            return trials[k][0] >= threshold

        best = 0 if full_score >= threshold else None
        if best is None:
            lo, k = 0, 1
            while k < limit and not attempt(k):
                lo, k = k, 2 * k
            k = min(k, limit)
            if k > 0 and attempt(k):
                hi = k
                while hi - lo > 1:  # invariant: lo misses, hi meets
                    mid = (lo + hi) // 2
                    if attempt(mid):
                        hi = mid
                    else:
                        lo = mid
                best = hi
        met = best is not None
        chosen = best if best is not None else max(trials, key=lambda i: trials[i][0])
        achieved, converted = trials[chosen]
        report = FallbackReport(
            target=target, met=met, achieved=achieved, full_int8=full_score,
            int8_layers=quantization_report(converted).count(precision="int8"),
            candidates=len(ranked) or quantization_report(full).count(precision="int8"),
            calibration_runs=cost["calibration_runs"], evaluations=cost["evaluations"],
            size_bytes=_size_bytes(converted), float_size_bytes=_size_bytes(base),
            trials=tuple(sorted((k, v[0]) for k, v in trials.items())),
            records=tuple(r for _, r in ranked[:chosen]),
            passes=tuple(_pass_name(p) for p in passes),
        )
        return FallbackResult(converted, report)
