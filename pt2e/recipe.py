"""One call that quantizes a model with the post-training algorithms that help its family.

:func:`quantize_with_recipe` runs the default flow (prepare, calibrate, convert) once as
the baseline, then tries the steps of the family's recipe in order, keeping each one
only if it raises the score on the evaluation data (the output SQNR against the float
model, or the user's ``metric``):

==============  =============================================================================
family          steps tried, in order
==============  =============================================================================
transformer     activation range margin; SmoothQuant on linears (each ``alpha``, default
                0.5 and 0.8, best kept); GPTQ weight rounding; bias correction
convnet         activation range margin; cross-layer equalization; SmoothQuant on convs
                and linears (each ``alpha``, default 0.5, 0.65 and 0.8); GPTQ weight
                rounding; bias correction
auto            ``transformer`` if the graph has a ``layer_norm``/``softmax``/attention op,
                else ``convnet`` if it has a conv, else ``transformer``
==============  =============================================================================

Every float step (:class:`~pt2e.smoothing.SmoothQuant`,
:class:`~pt2e.equalization.CrossLayerEqualization`) costs one more calibration run;
:class:`~pt2e.gptq.GPTQ` and :class:`~pt2e.bias_correction.BiasCorrection` one pass
each over the calibration data. The
report says what was applied and each step's score (see ``docs/algorithms.md``).

With held-out data to judge by (``eval_data`` or a ``metric``), every model the recipe
scores (the default flow and each step's alternative) is calibrated once and converted
with each activation range margin (:class:`~pt2e.range_margin.ActivationRangeMargin`:
every activation range widened by one factor, ``margins``) and as calibrated; the best
counts. Smoothing changes which ranges are too narrow, so a margin chosen once for the
default flow would not fit the smoothed model. On the calibration data itself the
calibrated ranges always win, so without held-out data no margin is tried (the report
says so).

>>> import torch
>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> data = [torch.randn(8, 8) for _ in range(4)]
>>> gm = torch.export.export(m, (data[0],)).module()
>>> q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
>>> result = quantize_with_recipe(gm, q, data, family="convnet")
>>> [s.name for s in result.report.steps]
['default flow', 'activation range margin', 'cross-layer equalization', 'SmoothQuant (alpha 0.5)', 'SmoothQuant (alpha 0.65)', 'SmoothQuant (alpha 0.8)', 'GPTQ weight rounding', 'bias correction']
>>> result.report.final >= result.report.baseline
True
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase
from torch.utils._pytree import tree_leaves

from .accuracy import run_batches
from .bias_correction import BiasCorrection
from .equalization import CrossLayerEqualization
from .errors import ArgumentValueError
from .gptq import GPTQ
from .layerwise import checked_inputs
from .numeric_debugger import sqnr
from .ops import CONV_OPS
from .progress import Progress
from .quantize_pt2e import prepare_pt2e
from .quantizer.base import Quantizer
from .range_margin import DEFAULT_MARGINS, choose_margin
from .report import Report
from .smoothing import SmoothQuant

__all__ = ["quantize_with_recipe", "RecipeReport", "RecipeResult", "RecipeStep", "FAMILIES", "DEFAULT_MARGINS"]

FAMILIES = ("auto", "transformer", "convnet")

# SmoothQuant strengths tried by default. Convnets also try 0.65: with 7-bit activations
# (reduce_range on a CPU without VNNI) it beat 0.5 on one split of the benchmark's
# MobileNetV3-style net (BENCHMARKS.md); the recipe keeps it only where it scores best.
_DEFAULT_ALPHAS = {"transformer": (0.5, 0.8), "convnet": (0.5, 0.65, 0.8)}

aten = torch.ops.aten
log = logging.getLogger(__name__)
_TRANSFORMER_OPS = frozenset({
    aten.layer_norm.default, aten.softmax.int, aten._softmax.default,
    aten.scaled_dot_product_attention.default,
})


@dataclass(frozen=True, kw_only=True)
class RecipeStep:
    """One step tried: its ``name``, whether it was ``applied`` (kept), the ``score`` the
    model reached with it, and ``detail`` (what it changed)."""

    name: str
    applied: bool
    score: float
    detail: str = ""

    def __str__(self) -> str:
        if math.isnan(self.score):
            return f"{self.name}: not tried" + (f"; {self.detail}" if self.detail else "")
        mark = "applied" if self.applied else "skipped (no gain)"
        return f"{self.name}: {self.score:.4f} {mark}" + (f"; {self.detail}" if self.detail else "")


@dataclass(frozen=True, kw_only=True)
class RecipeReport(Report):
    """What :func:`quantize_with_recipe` did: the ``family``, each step with its score,
    the ``baseline`` (default flow) and ``final`` scores, the ``metric`` name, and the cost."""

    title: str = ""
    family: str = ""
    metric: str = "output SQNR (dB)"
    steps: tuple[RecipeStep, ...] = ()
    baseline: float = math.nan
    final: float = math.nan
    calibration_runs: int = 0

    def __post_init__(self) -> None:
        if not self.title:
            kept = [s.name for s in self.steps[1:] if s.applied] or ["nothing"]
            object.__setattr__(self, "title", (
                f"recipe '{self.family}': {self.metric} {self.baseline:.4f} -> {self.final:.4f} "
                f"(applied: {', '.join(kept)}; {self.calibration_runs} calibration runs)"))

    def summary(self) -> str:
        """The title, then one indented line per step."""
        return "\n".join([self.title] + ["  " + str(s) for s in self.steps])


class RecipeResult(NamedTuple):
    """The converted model and the :class:`RecipeReport`."""

    model: GraphModule
    report: RecipeReport


def _family(model: GraphModule) -> str:
    targets = {n.target for n in model.graph.nodes if n.op == "call_function"}
    if targets & _TRANSFORMER_OPS:
        return "transformer"
    if targets & CONV_OPS:
        return "convnet"
    return "transformer"


def _flat(outputs: list[Any]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)])


def quantize_with_recipe(
    model: GraphModule,
    quantizer: Quantizer,
    calibration_data: Sequence[Any],
    *,
    family: str = "auto",
    eval_data: Sequence[Any] | None = None,
    metric: Callable[[torch.nn.Module], float] | None = None,
    alpha: float | Sequence[float] | None = None,
    margins: Sequence[float] = DEFAULT_MARGINS,
    progress: bool = True,
) -> RecipeResult:
    """Quantize the exported float ``model`` with ``quantizer`` and the recipe of ``family``.

    ``calibration_data`` and ``eval_data`` (default: the calibration data) are lists of
    batches (tuples of arguments, or tensors). The score is the output SQNR against the
    float model on ``eval_data``, or ``metric(model)`` (higher is better). ``alpha`` is
    SmoothQuant's migration strength, or several to try (each one calibration run; the
    best is kept); ``None`` tries the family's defaults (see the module docstring).
    ``margins`` are the activation range margins tried with every scored model (``()``
    tries none); they need ``eval_data`` distinct from the calibration data, or a
    ``metric``. ``model`` is not changed. ``progress`` draws a bar of the steps on a
    terminal (:mod:`pt2e.progress`); each step's score is also logged at INFO level.
    Example: see the module docstring.
    """
    if family not in FAMILIES:
        raise ArgumentValueError(f"quantize_with_recipe(family={family!r}): pass one of {FAMILIES}")
    calibration = checked_inputs("quantize_with_recipe", model, calibration_data)
    evaluation = list(eval_data) if eval_data is not None else calibration
    chosen = _family(model) if family == "auto" else family
    reference = _flat(run_batches(model, evaluation))
    runs = [0]

    def score(m: torch.nn.Module) -> float:
        if metric is not None:
            return float(metric(m))
        return float(sqnr(reference, _flat(run_batches(m, evaluation))))

    def calibrated(float_model: GraphModule) -> GraphModule:
        runs[0] += 1
        prepared = prepare_pt2e(copy.deepcopy(float_model), quantizer)
        run_batches(prepared, calibration)
        return prepared

    if alpha is None:
        alphas: tuple[float, ...] = _DEFAULT_ALPHAS[chosen]
    else:
        alphas = (alpha,) if isinstance(alpha, (int, float)) else tuple(alpha)
    smooth: list[tuple[str, Callable[[], PassBase]]] = [
        (f"SmoothQuant (alpha {a:g})", lambda a=a: SmoothQuant(calibration, alpha=float(a),  # type: ignore[misc]
                                                               convs=chosen == "convnet"))
        for a in alphas]
    # each stage: alternatives tried from the same model; the best one is kept if it helps
    stages: list[list[tuple[str, Callable[[], PassBase]]]] = [smooth]
    if chosen == "convnet":
        stages.insert(0, [("cross-layer equalization", CrossLayerEqualization)])

    judged = bool(margins) and (eval_data is not None or metric is not None)
    factors = (1.0, *margins) if judged else (1.0,)
    post: list[tuple[str, type[GPTQ] | type[BiasCorrection], str]] = [
        ("GPTQ weight rounding", GPTQ, "layers re-rounded"), ("bias correction", BiasCorrection, "biases corrected")]

    def search(bar: Progress) -> RecipeResult:
        def done(name: str, s: float) -> None:
            log.info("recipe: %s -> %.5g", name, s)
            bar.advance(f"{name}: {s:.4g}")

        best_float = copy.deepcopy(model)
        start = choose_margin(calibrated(best_float), score, factors)
        baseline = start.scores[0][1]  # factor 1: the default flow
        done("default flow" if start.factor == 1.0 else f"default flow, margin x{start.factor:g}", start.score)
        best, best_q = start.score, start.model
        steps = [RecipeStep(name="default flow", applied=True, score=baseline)]
        if judged:
            f0, s0 = max(start.scores[1:], key=lambda fs: fs[1])
            steps.append(RecipeStep(name=f"activation range margin (x{f0:g})", applied=start.factor != 1.0,
                                    score=s0, detail="tried " + start.tried()))
        else:
            why = ("no margins given" if not margins else
                   "needs eval_data distinct from the calibration data, or a metric (on the "
                   "calibration data the calibrated ranges always win)")
            steps.append(RecipeStep(name="activation range margin", applied=False, score=math.nan, detail=why))
        for stage in stages:
            tried = []
            for name, make in stage:
                candidate = copy.deepcopy(best_float)
                p = make()
                p(candidate)
                choice = choose_margin(calibrated(candidate), score, factors)
                scaled = getattr(p, "layers", ())
                muls = sum(str(getattr(r, "how", "")).startswith("mul inserted") for r in scaled)
                detail = f"{len(scaled)} layer groups scaled"
                if muls:  # a float op at run time, where the scale could not be folded
                    detail += f" ({muls} through an inserted float mul)"
                if judged:
                    detail += f"; with margin x{choice.factor:g} (tried {choice.tried()})"
                tried.append((choice.score, name, candidate, choice.model, detail))
                done(name, choice.score)
            top = max(tried, key=lambda t: t[0])
            for s_, name, _, _, detail in tried:
                keep = name == top[1] and s_ > best
                steps.append(RecipeStep(name=name, applied=keep, score=s_, detail=detail))
            if top[0] > best:
                best, best_float, best_q = top[0], top[2], top[3]
        # passes on the converted model, in order: each kept only if it scores better
        for name, make, what in post:
            candidate_q = copy.deepcopy(best_q)
            p = make(best_float, calibration)
            p(candidate_q)
            s = score(candidate_q)
            done(name, s)
            keep = s > best
            steps.append(RecipeStep(name=name, applied=keep, score=s, detail=f"{len(p.layers)} {what}"))
            if keep:
                best, best_q = s, candidate_q
        report = RecipeReport(family=chosen, metric="metric" if metric is not None else "output SQNR (dB)",
                              steps=tuple(steps), baseline=baseline, final=best, calibration_runs=runs[0])
        return RecipeResult(best_q, report)

    steps_total = 1 + sum(len(stage) for stage in stages) + len(post)
    with Progress(f"recipe ({chosen})", total=steps_total, enabled=progress) as bar:
        return search(bar)
