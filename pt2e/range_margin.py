"""Activation range margin: widen calibrated activation ranges for data calibration never saw.

A histogram or min/max observer fits each activation's range to the calibration data.
On a few dozen images that range is too narrow for unseen ones: the tails of a
MobileNet-style net's activations keep growing with the number of images observed, so
new images are clipped. Measured on the benchmark's MobileNetV3-style net
(``BENCHMARKS.md``): calibrating on 512 instead of 128 images makes 37 of its 47
activation scales 1.25-2.8x wider and raises the held-out output SQNR from 8.2 to 12.8 dB.

:class:`ActivationRangeMargin` widens every calibrated per-tensor activation range of a
*prepared, calibrated* model by one ``factor``, about zero: ``scale * factor`` with the
same zero point, so ``[lo, hi]`` becomes ``[factor * lo, factor * hi]``. Each widened
observer is replaced by a :class:`~observers.FixedQParamsObserver` holding the new
qparams, so ``convert_pt2e`` emits them as usual. A single factor for the whole model is
one number to choose. Choose it on held-out data, never on the calibration data itself:
calibration data always prefers factor 1. :func:`~pt2e.recipe.quantize_with_recipe`
tries several factors on its ``eval_data`` and keeps a factor only if it helps there.

Not widened: weights (observers of constants), per-channel and dynamic observers,
fixed-qparams outputs (a sigmoid's ``[0, 1)``), fake quantizers (QAT), and the sources of
a derived spec (its qparams would no longer match). Wider ranges mean coarser steps, so
with enough calibration data the best factor is 1.

>>> import torch
>>> from pt2e import convert_pt2e, prepare_pt2e
>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> gm = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),)).module()
>>> prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
...     get_default_x86_inductor_quantization_config()))
>>> _ = prepared(torch.linspace(-1, 1, 8).reshape(2, 4))      # calibrate: range [-1, 1]
>>> margin = ActivationRangeMargin(2.0)
>>> margin(prepared).modified, [w.observer for w in margin.widened]
(True, ['activation_post_process_0'])
>>> q = convert_pt2e(prepared)
>>> from pt2e.ops import is_quantize
>>> qx = next(n for n in q.graph.nodes if is_quantize(n))       # the input's quantize
>>> scale, zero_point = qx.args[1:3]
>>> round((0 - zero_point) * scale, 1), round((255 - zero_point) * scale, 1)   # was (-1, 1)
(-2.0, 2.0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from observers import DerivedObserverOrFakeQuantize, FixedQParamsObserver
from observers.facts import PER_TENSOR_QSCHEMES, int_range, storage_dtype

from .convert import observer_qparams
from .errors import ArgumentTypeError, ArgumentValueError
from .graph import describe_node
from .prepare import observer_nodes
from .quantize_pt2e import convert_pt2e

__all__ = ["ActivationRangeMargin", "WidenedRange", "MarginChoice", "choose_margin", "DEFAULT_MARGINS"]

# factors choose_margin and quantize_with_recipe try besides 1 (BENCHMARKS.md: the
# benchmark's convnets chose 1.2-1.5; wider ones help only after very few calibration images)
DEFAULT_MARGINS = (1.1, 1.2, 1.3, 1.5, 2.0, 2.5)


@dataclass(frozen=True, kw_only=True)
class WidenedRange:
    """One widened observer: its module name, the node it observes, and its range before
    (``low``, ``high``) and after (``new_low``, ``new_high``)."""

    observer: str
    observes: str
    low: float
    high: float
    new_low: float
    new_high: float


def _derived_sources(modules: dict[str, nn.Module]) -> set[int]:
    sources: set[int] = set()
    for m in modules.values():
        if isinstance(m, DerivedObserverOrFakeQuantize):
            sources.update(id(s) for s in m.obs_or_fqs)
    return sources


def _widenable(obs: Any, source: Any) -> bool:
    if isinstance(source, Node) and source.op == "get_attr":
        return False  # a weight (constant)
    if isinstance(obs, (FixedQParamsObserver, DerivedObserverOrFakeQuantize)):
        return False
    if hasattr(obs, "activation_post_process") or getattr(obs, "is_dynamic", False):
        return False  # a fake quantizer (QAT), or scale computed at run time
    dtype = getattr(obs, "dtype", None)
    if not isinstance(dtype, torch.dtype) or int_range(storage_dtype(dtype)) is None:
        return False
    return getattr(obs, "qscheme", None) in PER_TENSOR_QSCHEMES


class ActivationRangeMargin(PassBase):
    """Widen each calibrated per-tensor activation range of a prepared model by ``factor``.

    Run it after calibration and before ``convert_pt2e``; ``factor >= 1`` (1 changes
    nothing). ``widened`` lists what changed. Example: see the module docstring.
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        if not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor >= 1.0):
            raise ArgumentValueError(
                f"ActivationRangeMargin(factor={factor!r}): pass a finite factor >= 1 (1.5 widens "
                "every activation range by half)")
        self.factor = float(factor)
        self.widened: tuple[WidenedRange, ...] = ()

    def call(self, graph_module: GraphModule) -> PassResult:
        """Replace every widenable observer of the calibrated ``graph_module``."""
        if not isinstance(graph_module, GraphModule):
            raise ArgumentTypeError(
                f"ActivationRangeMargin expects a prepared, calibrated GraphModule, got "
                f"{type(graph_module).__name__}; run it on prepare_pt2e's result after calibration")
        nodes = observer_nodes(graph_module)
        if not nodes:
            raise ArgumentValueError(
                "ActivationRangeMargin found no observers: run it on prepare_pt2e's result, "
                "after calibration and before convert_pt2e")
        modules = dict(graph_module.named_modules(remove_duplicate=False))
        keep = _derived_sources(modules)
        done: list[WidenedRange] = []
        replaced: dict[int, FixedQParamsObserver] = {}
        for node in nodes:
            name = str(node.target)
            obs = modules[name]
            source = node.args[0] if node.args else None
            if id(obs) in keep or not _widenable(obs, source):
                continue
            fixed = replaced.get(id(obs))
            if fixed is None:
                scale, zp = observer_qparams(obs, node)
                s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
                full = int_range(storage_dtype(obs.dtype)) or (0, 255)  # _widenable checked it
                qmin = full[0] if getattr(obs, "quant_min", None) is None else int(obs.quant_min)
                qmax = full[1] if getattr(obs, "quant_max", None) is None else int(obs.quant_max)
                fixed = FixedQParamsObserver(scale=s * self.factor, zero_point=z, dtype=obs.dtype,
                                             qscheme=obs.qscheme, quant_min=qmin, quant_max=qmax)
                replaced[id(obs)] = fixed
                observed = describe_node(source) if isinstance(source, Node) else "its input"
                done.append(WidenedRange(observer=name, observes=observed,
                                         low=(qmin - z) * s, high=(qmax - z) * s,
                                         new_low=(qmin - z) * s * self.factor,
                                         new_high=(qmax - z) * s * self.factor))
            graph_module.add_submodule(name, fixed)
        self.widened = tuple(done)
        return PassResult(graph_module, bool(done) and self.factor != 1.0)


@dataclass(frozen=True, kw_only=True)
class MarginChoice:
    """What :func:`choose_margin` found: the best ``factor``, its ``score``, the ``model``
    converted with it, and ``scores``, ``(factor, score)`` for every factor tried in order."""

    factor: float
    score: float
    model: GraphModule
    scores: tuple[tuple[float, float], ...]

    def tried(self) -> str:
        """The scores as text, e.g. ``"x1: 10.94, x1.2: 12.31"``."""
        return ", ".join(f"x{f:g}: {s:.2f}" for f, s in self.scores)


def choose_margin(prepared: GraphModule, score: Callable[[nn.Module], float],
                  factors: Sequence[float] = (1.0, *DEFAULT_MARGINS)) -> MarginChoice:
    """Convert copies of the calibrated ``prepared`` model with each activation range margin
    in ``factors`` and keep the one ``score`` (higher is better) likes best.

    ``score`` takes a converted model; make it measure held-out data, never the calibration
    data (there the calibrated ranges always win). ``prepared`` is not changed; ties go to
    the first factor, so list 1 first to prefer the ranges as calibrated.

    >>> import torch
    >>> from pt2e import prepare_pt2e
    >>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    >>> gm = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),)).module()
    >>> prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config()))
    >>> _ = prepared(torch.linspace(-1, 1, 8).reshape(2, 4))       # calibrated on [-1, 1]
    >>> unseen = torch.linspace(-1.8, 1.8, 8).reshape(2, 4)         # held out: wider
    >>> def score(q):
    ...     with torch.no_grad():
    ...         return -float((q(unseen) - gm(unseen)).abs().max())
    >>> choice = choose_margin(prepared, score, factors=(1.0, 2.0))
    >>> choice.factor
    2.0
    """
    factors = tuple(factors)
    if not factors:
        raise ArgumentValueError("choose_margin(factors=()): pass at least one factor, e.g. (1.0, 1.5)")
    if not callable(score):
        raise ArgumentTypeError(
            f"choose_margin(score=...) takes a function of the converted model, got {type(score).__name__}")
    for factor in factors:
        ActivationRangeMargin(factor)  # checks every factor before any work
    best_model = _converted_with_margin(prepared, factors[0])
    scores = [(float(factors[0]), float(score(best_model)))]
    best = 0
    for factor in factors[1:]:
        q = _converted_with_margin(prepared, factor)  # only the best one is kept in memory
        scores.append((float(factor), float(score(q))))
        if _rank(scores[-1][1]) > _rank(scores[best][1]):
            best, best_model = len(scores) - 1, q
    return MarginChoice(factor=scores[best][0], score=scores[best][1], model=best_model, scores=tuple(scores))


def _rank(score: float) -> float:
    return -math.inf if math.isnan(score) else score  # a NaN score never wins


def _converted_with_margin(prepared: GraphModule, factor: float) -> GraphModule:
    candidate = copy.deepcopy(prepared)
    if factor != 1.0:
        ActivationRangeMargin(factor)(candidate)
    return convert_pt2e(candidate)
