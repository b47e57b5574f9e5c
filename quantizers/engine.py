"""The shared, table-driven engine every backend quantizer here is built on.

A backend is three things: a :class:`~quantizers.patterns.PatternTable` (which
operator patterns it runs in integer, each with a small annotator), a config
builder (``get_default_..._config``), and the public setter names its users know
(torchao's ``set_module_name_qconfig`` or ExecuTorch's ``set_module_name``). This
module owns everything else, once:

* **config precedence** -- stated here and nowhere else: a pattern is annotated by
  the first stage that selects it, in the order

  1. module name (``set_module_name*``): every node of the match lies inside that submodule;
  2. module type (``set_module_type`` in ExecuTorch's sense): every node was traced
     inside a module of that type;
  3. operator type (torchao's ``set_module_type_qconfig`` / ``set_function_type_qconfig``,
     ExecuTorch's ``set_operator_type``): the match's anchor is that operator;
  4. global: rows with ``default=True``.

  Within a stage, configs apply in the order they were set. A ``None`` config claims
  its matches without quantizing them: they stay float, later stages of this
  quantizer skip them, and no annotation is written, so the next quantizer of a
  :class:`~pt2e.quantizer.ComposableQuantizer` may still quantize them (a node a
  quantizer does not quantize stays free). With
  ``exclusive_module_scopes = True`` (ExecuTorch's rule) a node inside a module named
  or typed in stage 1 or 2 is governed by that stage only: stages 3 and 4 skip it.
  Rows marked ``propagate=True`` (ops that reuse their producer's qparams, such as
  XNNPACK's layout ops) run once after every stage, in graph order, whatever the configs.
* **the stage loop** -- rows in priority order, matches in graph order, claimed nodes
  skipped (:func:`pt2e.quantizer.any_annotated`);
* **the dynamic/static filter** -- a dynamic config (runtime ``choose_qparams``)
  applies only to rows marked ``dynamic=True``;
* **the "stayed float" report** -- :meth:`TableQuantizer.report` lists every compute
  op left float with the reason (``None`` config, the backend's own reason, an opt-in
  row, no pattern, dead code);
* **observer choice** -- :func:`activation_observer` / :func:`weight_observer` pick the
  observer or fake quantizer for ``(is_qat, is_dynamic)``.

A toy backend in a dozen lines:

>>> import torch
>>> from observers import MinMaxObserver, PerChannelMinMaxObserver
>>> from pt2e.quantizer import QuantizationConfig, QuantizationSpec
>>> from quantizers.annotators import annotate_weighted_pattern
>>> from quantizers.patterns import LINEAR_OPS, RELU_OPS, PatternTable, Step
>>> TOY = PatternTable()
>>> @TOY.register(name="linear_relu", anchor=LINEAR_OPS, priority=2,
...               chain=(Step(role="unary", ops=RELU_OPS),))
... @TOY.register(name="linear", anchor=LINEAR_OPS, priority=1)
... def _linear(match, config, ctx):
...     annotate_weighted_pattern(match, config, ctx, quantize_binary_input=False)
>>> class ToyQuantizer(TableQuantizer):
...     patterns = TOY
...     def set_global(self, config):
...         return self._set_global(config)
>>> act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
...                        qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
>>> w = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, ch_axis=0,
...                      qscheme=torch.per_channel_symmetric,
...                      observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
>>> q = ToyQuantizer().set_global(QuantizationConfig(act, act, w, None))
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Conv1d(1, 1, 1))
>>> gm = torch.export.export(m.eval(), (torch.randn(1, 4),)).module()
>>> print(q.report(gm))
ToyQuantizer: 1 compute op(s) stay float
  conv1d (aten.conv1d.default in '2'): no quantization pattern for this operator
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch.fx import GraphModule, Node

from observers import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from pt2e.quantizer import (
    QuantizationConfig,
    Quantizer,
    any_annotated,
    get_module_name_filter,
    get_module_type_filter,
    is_annotated,
)
from pt2e.report import OpRecord, Report

from .annotators import AnnotationContext, unquantized_compute_ops
from .patterns import COMPUTE_OPS, Match, PatternTable
from .scopes import unmatched_scopes

__all__ = [
    "TableQuantizer",
    "Stage",
    "is_dynamic_config",
    "activation_observer",
    "weight_observer",
]

log = logging.getLogger(__name__)

NodeFilter = Callable[[Node], bool]
MatchFilter = Callable[[Match], bool]


def is_dynamic_config(config: QuantizationConfig | None) -> bool:
    """Whether ``config`` quantizes activations at run time (``choose_qparams`` per call).

    >>> from quantizers import get_default_x86_inductor_quantization_config as x86
    >>> is_dynamic_config(x86(is_dynamic=True)), is_dynamic_config(x86()), is_dynamic_config(None)
    (True, False, False)
    """
    act = None if config is None else config.input_activation
    return bool(act is not None and act.is_dynamic)


def activation_observer(*, is_qat: bool, is_dynamic: bool, **kwargs: Any) -> Any:
    """The activation observer / fake-quantize constructor for a recipe, with ``kwargs`` bound.

    Static PTQ: a histogram observer. Dynamic PTQ: a placeholder (qparams are computed
    at run time). QAT: a fused moving-average fake quantizer. Dynamic QAT: a fake
    quantizer whose observer keeps only the latest batch's range (as run time would).

    >>> activation_observer(is_qat=False, is_dynamic=False, eps=0.5)().eps
    tensor([0.5000])
    """
    if is_qat and is_dynamic:
        return FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1), **kwargs
        )
    if is_qat:
        return FusedMovingAvgObsFakeQuantize.with_args(**kwargs)
    if is_dynamic:
        return PlaceholderObserver.with_args(**kwargs)
    return HistogramObserver.with_args(**kwargs)


def weight_observer(*, is_qat: bool, per_channel: bool, **kwargs: Any) -> Any:
    """The weight observer / fake-quantize constructor: min/max per channel or per tensor.

    >>> type(weight_observer(is_qat=True, per_channel=True)()).__name__
    'FusedMovingAvgObsFakeQuantize'
    """
    if is_qat:
        observer = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        return FusedMovingAvgObsFakeQuantize.with_args(observer=observer, **kwargs)
    return (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(**kwargs)


def _operator_matches(target: Any, key: Any) -> bool:
    """Whether a node target is the operator ``key``: an overload, a packet or a set of overloads."""
    if isinstance(key, frozenset):
        return target in key
    if isinstance(key, torch._ops.OpOverloadPacket):
        return getattr(target, "overloadpacket", None) is key
    return bool(target == key)


@dataclass(frozen=True)
class Stage:
    """One step of the precedence order: a config and which matches it may annotate."""

    name: str
    config: QuantizationConfig | None
    selects: MatchFilter


class TableQuantizer(Quantizer):
    """A quantizer that is a pattern table plus configs; subclasses add the public setter names.

    Subclass attributes a backend sets:

    * ``patterns``: its :class:`~quantizers.patterns.PatternTable` (a subclass or an
      instance may assign another, e.g. a derived table);
    * ``float_reasons``: ``{op set: reason}`` shown for ops of that set left float;
    * ``exclusive_module_scopes``: ExecuTorch's rule (see the module docstring);
    * ``tracked_ops``: compute ops whose rejection by :meth:`unsupported_reason` is
      reported in :attr:`skipped`.

    and the hooks :meth:`check_config` (reject a config when it is set) and
    :meth:`unsupported_reason` (why the backend cannot run one node with one config).
    """

    patterns: PatternTable  # class-level table; an instance may assign its own
    float_reasons: ClassVar[Mapping[frozenset[Any], str]] = {}
    exclusive_module_scopes: ClassVar[bool] = False
    tracked_ops: ClassVar[frozenset[Any]] = COMPUTE_OPS

    def __init__(self) -> None:
        super().__init__()
        self.global_config: QuantizationConfig | None = None
        self.module_name_config: dict[str, QuantizationConfig | None] = {}
        self.module_type_config: dict[Any, QuantizationConfig | None] = {}
        self.operator_type_config: dict[Any, QuantizationConfig | None] = {}
        # (setter, operator key) the user set through a public set_* method
        self.user_operator_types: list[tuple[str, Any]] = []
        self.filter_fn: NodeFilter | None = None
        self.unquantized_ops: list[OpRecord] = []
        self.skipped: list[OpRecord] = []

    # --- configuration: backends expose these under their users' names ----------------------

    def _set_global(self, config: QuantizationConfig | None) -> Self:
        self.check_config(config, "set_global")
        self.global_config = config
        return self

    def _set_module_name(self, name: str, config: QuantizationConfig | None, where: str) -> Self:
        self.check_config(config, where)
        self.module_name_config[name] = config
        return self

    def _set_module_type(self, module_type: Any, config: QuantizationConfig | None, where: str) -> Self:
        self.check_config(config, where)
        self.module_type_config[module_type] = config
        return self

    def _set_operator_type(self, operator: Any, config: QuantizationConfig | None, where: str) -> Self:
        self.check_config(config, where)
        self.operator_type_config[operator] = config
        if where.startswith("set_"):
            self.user_operator_types.append((where, operator))
        return self

    def configs(self) -> list[QuantizationConfig]:
        """Every config set on this quantizer, ``None`` entries left out."""
        every = [self.global_config, *self.module_name_config.values(),
                 *self.module_type_config.values(), *self.operator_type_config.values()]
        return [c for c in every if c is not None]

    # --- hooks --------------------------------------------------------------------------------

    def check_config(self, config: QuantizationConfig | None, where: str) -> None:
        """Raise :class:`~pt2e.errors.QuantizationConfigError` for a config this backend refuses."""

    def unsupported_reason(self, node: Node, config: QuantizationConfig) -> str | None:
        """Why this backend cannot quantize ``node`` with ``config`` (``None``: it can)."""
        return None

    def reasons(self) -> dict[frozenset[Any], str]:
        """``{op set: reason}`` for ops left float (default: :attr:`float_reasons`)."""
        return dict(self.float_reasons)

    # --- the precedence order -----------------------------------------------------------------

    def stages(self) -> Iterator[Stage]:
        """The stages in precedence order (module name, module type, operator, global)."""
        scoped: list[NodeFilter] = []
        for name, config in self.module_name_config.items():
            in_module = get_module_name_filter(name)
            scoped.append(in_module)
            yield Stage(f"module name {name!r}", config, self._all_nodes(in_module))
        for module_type, config in self.module_type_config.items():
            in_type = get_module_type_filter(module_type)
            scoped.append(in_type)
            yield Stage(f"module type {module_type!r}", config, self._all_nodes(in_type))

        def outside_scopes(node: Node) -> bool:
            return not (self.exclusive_module_scopes and any(f(node) for f in scoped))

        rest = self._all_nodes(outside_scopes)
        for operator, config in self.operator_type_config.items():
            yield Stage(f"operator {operator!r}", config, _anchor_is(operator, rest))
        # a None global config is the same as none: what no stage selected stays untouched
        if self.global_config is not None:
            yield Stage("global", self.global_config, _default_row(rest))

    def _all_nodes(self, node_filter: NodeFilter) -> MatchFilter:
        user_filter = self.filter_fn

        def selected(match: Match) -> bool:
            return all(node_filter(n) and (user_filter is None or user_filter(n)) for n in match.nodes)

        return selected

    # --- annotation ---------------------------------------------------------------------------

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate ``model`` in place, stage by stage in precedence order, and record the report."""
        self.warn_unmatched_scopes(model)
        ctx = AnnotationContext()
        covered: dict[Node, QuantizationConfig] = {}
        # declined nodes stay float and unannotated: skipped here, free for the next quantizer
        declined: dict[Node, str] = {}
        for stage in self.stages():
            self._annotate_stage(model, stage, ctx, covered, declined)
        for match in self.patterns.matches(model.graph, propagating=True):
            if not any_annotated(match.nodes) and declined.keys().isdisjoint(match.nodes):
                match.pattern.annotator(match, None, ctx)
        backend_reasons = {
            node: reason for node, config in covered.items()
            if not is_annotated(node) and (reason := self.unsupported_reason(node, config)) is not None
        }
        self.unquantized_ops = unquantized_compute_ops(
            model.graph, self.reasons(), {**declined, **backend_reasons}
        )
        refused = {n.name for n in backend_reasons}
        self.skipped = [op for op in self.unquantized_ops if op.node in refused]
        for op in self.unquantized_ops:
            log.info("%s leaves float: %s", type(self).__name__, op)
        if self.skipped:
            self.report_skipped(self.skipped)
        return model

    def _annotate_stage(
        self,
        model: GraphModule,
        stage: Stage,
        ctx: AnnotationContext,
        covered: dict[Node, QuantizationConfig],
        declined: dict[Node, str],
    ) -> None:
        config = stage.config
        dynamic = is_dynamic_config(config)
        for match in self.patterns.matches(model.graph):
            if any_annotated(match.nodes) or not declined.keys().isdisjoint(match.nodes):
                continue
            if not stage.selects(match):
                continue
            if config is None:
                declined.update(dict.fromkeys(match.nodes, "excluded by a None quantization config"))
                continue
            if match.anchor.target in self.tracked_ops:
                covered.setdefault(match.anchor, config)
            if dynamic and not match.pattern.dynamic:
                continue
            match.pattern.annotator(match, config, ctx)

    def warn_unmatched_scopes(self, model: GraphModule) -> None:
        """Warn for each module name, module type or operator setting that selects nothing."""
        problems = unmatched_scopes(
            model, module_names=self.module_name_config, module_types=self.module_type_config,
            operators=self.user_operator_types, operator_matches=_operator_matches)
        for problem in problems:
            warnings.warn(f"{type(self).__name__}: {problem}", UserWarning, stacklevel=3)

    def report_skipped(self, skipped: list[OpRecord]) -> None:
        """Called after annotation when a config covered ops the backend refused (default: log)."""
        for op in skipped:
            log.warning("%s could not quantize %s", type(self).__name__, op)

    def report(self, model: GraphModule | None = None) -> Report:
        """Which compute ops stay float, and why (a :class:`~pt2e.report.Report`; print it).

        With ``model`` (an exported, not yet annotated graph) a copy is annotated;
        without, the last :meth:`annotate` call is reported.
        """
        if model is not None:
            self.annotate(copy.deepcopy(model))
        ops = tuple(self.unquantized_ops)
        return Report(title=f"{type(self).__name__}: {len(ops)} compute op(s) stay float", records=ops)

    def validate(self, model: GraphModule) -> None:
        """Nothing to check after annotation: specs and configs validate themselves when built."""


def _anchor_is(operator: Any, rest: MatchFilter) -> MatchFilter:
    def selected(match: Match) -> bool:
        return _operator_matches(match.anchor.target, operator) and rest(match)

    return selected


def _default_row(rest: MatchFilter) -> MatchFilter:
    def selected(match: Match) -> bool:
        return match.pattern.default and rest(match)

    return selected
