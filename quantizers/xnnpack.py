"""XNNPACK (ExecuTorch) quantizer: int8 activations, int8 or int4 symmetric weights.

XNNPACK's integer kernels take asymmetric int8 activations (per tensor),
symmetric int8 weights (per tensor or per output channel) and a float bias that
XNNPACK itself quantizes to int32. With a *dynamic* config, activations are
quantized at run time (``choose_qparams`` per call) and outputs stay float.

The quantizer is the pattern table :data:`XNNPACK_PATTERNS` plus the annotators in
:mod:`quantizers.xnnpack_annotators`. Configuration follows ExecuTorch's own
``XNNPACKQuantizer``: ``set_module_name`` beats ``set_module_type`` beats
``set_operator_type`` beats ``set_global``.

>>> import torch
>>> from quantizers.xnnpack import XNNPACKQuantizer, get_symmetric_quantization_config
>>> q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
>>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()),
...                          (torch.randn(2, 4),)).module()
>>> gm = q.annotate(q.transform_for_annotation(gm))
>>> [n.name for n in gm.graph.nodes if "quantization_annotation" in n.meta]
['linear', 'relu']

Deliberate differences from ExecuTorch's quantizer: a weight range of -8..7
(4-bit) must be per-channel (XNNPACK has no per-tensor 4-bit kernel); a layer a
dynamic config cannot quantize is reported with :class:`XnnpackSkipWarning` and
listed in :attr:`XNNPACKQuantizer.skipped`; ``set_module_name(name, None)``
leaves that module in float instead of raising.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

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
from pt2e.errors import QuantizationConfigError
from pt2e.quantizer import (
    OperatorConfig,
    QuantizationConfig,
    QuantizationSpec,
    Quantizer,
    any_annotated,
    get_module_name_filter,
    get_module_type_filter,
    get_not_module_type_or_name_filter,
    is_annotated,
    module_stack,
)

from .annotators import AnnotationContext, UnquantizedOp, mark_not_quantized
from .patterns import ADD_OPS, Match
from .xnnpack_annotators import (
    MUL_OPS,
    WEIGHTED_OPS,
    XNNPACK_PATTERNS,
    propagate_shared_qparams,
    unsupported_reason,
)

__all__ = [
    "XNNPACKQuantizer",
    "XNNPACK_PATTERNS",
    "XnnpackSkipWarning",
    "get_symmetric_quantization_config",
]

_EPS = 2**-12  # the smallest scale XNNPACK's requantization handles well


@functools.lru_cache
def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """The XNNPACK config: int8 asymmetric activations, int8 symmetric weights, float bias.

    Same arguments and defaults as ExecuTorch's function. The result is cached, so
    equal arguments give the same object. ``weight_qmin=-8, weight_qmax=7`` with
    ``is_per_channel=True`` gives 4-bit weights (XNNPACK's ``qc4w`` kernels; use it
    with ``is_dynamic=True`` for linear layers).

    >>> cfg = get_symmetric_quantization_config(is_per_channel=True)
    >>> cfg.weight.qscheme, cfg.weight.quant_min, cfg.input_activation.dtype
    (torch.per_channel_symmetric, -127, torch.int8)
    >>> get_symmetric_quantization_config(is_dynamic=True).output_activation is None
    True
    >>> get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7)
    Traceback (most recent call last):
    ...
    observers.errors.QuantizationConfigError: get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7) asks for 4-bit weights, which XNNPACK supports per channel only; pass is_per_channel=True
    """
    if (weight_qmin, weight_qmax) == (-8, 7) and not is_per_channel:
        raise QuantizationConfigError(
            "get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7) asks for 4-bit "
            "weights, which XNNPACK supports per channel only; pass is_per_channel=True"
        )
    if weight_qmin != -weight_qmax and (weight_qmin, weight_qmax) != (-8, 7):
        raise QuantizationConfigError(
            f"get_symmetric_quantization_config(weight_qmin={weight_qmin}, weight_qmax={weight_qmax}) "
            "is not a symmetric range; XNNPACK rejects such weights at load time. Use "
            "-127..127 (int8) or -8..7 (int4)"
        )
    act_kwargs: dict[str, Any] = {"eps": _EPS}
    act_ctr: Any
    if is_qat and is_dynamic:
        act_ctr = FakeQuantize
        act_kwargs["observer"] = MovingAverageMinMaxObserver.with_args(averaging_constant=1)
    elif is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize
    elif is_dynamic:
        act_ctr = PlaceholderObserver
    else:
        act_ctr = HistogramObserver
    act = QuantizationSpec(
        dtype=torch.int8, quant_min=act_qmin, quant_max=act_qmax,
        qscheme=torch.per_tensor_affine, is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=act_ctr.with_args(**act_kwargs),
    )

    w_kwargs: dict[str, Any] = {"eps": _EPS}
    w_ctr: Any
    if is_qat:
        w_ctr = FusedMovingAvgObsFakeQuantize
        w_kwargs["observer"] = (
            MovingAveragePerChannelMinMaxObserver if is_per_channel else MovingAverageMinMaxObserver
        )
    else:
        w_ctr = PerChannelMinMaxObserver if is_per_channel else MinMaxObserver
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=weight_qmin, quant_max=weight_qmax,
        qscheme=torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric,
        ch_axis=0, is_dynamic=False,
        observer_or_fake_quant_ctr=w_ctr.with_args(**w_kwargs),
    )
    return QuantizationConfig(act, None if is_dynamic else act, weight, None, is_qat)


class XnnpackSkipWarning(UserWarning):
    """A layer the chosen config covers could not be quantized for XNNPACK (it stays float)."""


def _matches_operator(target: Any, operator: Any) -> bool:
    if isinstance(operator, torch._ops.OpOverloadPacket):
        return getattr(target, "overloadpacket", None) is operator
    return target == operator


class XNNPACKQuantizer(Quantizer):
    """Annotate an exported model for XNNPACK's int8 kernels (ExecuTorch's delegate).

    >>> import torch
    >>> q = XNNPACKQuantizer()
    >>> q = q.set_global(get_symmetric_quantization_config())
    >>> q = q.set_module_type(torch.nn.Conv2d, get_symmetric_quantization_config(is_per_channel=True))
    >>> q.set_module_name("head", None) is q
    True
    """

    patterns = XNNPACK_PATTERNS

    def __init__(self) -> None:
        super().__init__()
        self.global_config: QuantizationConfig | None = None
        self.operator_type_config: dict[Any, QuantizationConfig | None] = {}
        self.module_type_config: dict[Callable, QuantizationConfig | None] = {}
        self.module_name_config: dict[str, QuantizationConfig | None] = {}
        self.filter_fn: Callable[[Node], bool] | None = None
        self.skipped: list[UnquantizedOp] = []

    # ---- configuration (same names and argument order as ExecuTorch's quantizer)

    def set_global(self, quantization_config: QuantizationConfig | None) -> XNNPACKQuantizer:
        """Config for every node no more specific setting covers."""
        self.global_config = quantization_config
        return self

    def set_operator_type(
        self, operator_type: Any, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for patterns built on ``operator_type`` (``torch.ops.aten.linear.default``
        or the packet ``torch.ops.aten.linear``)."""
        self.operator_type_config[operator_type] = quantization_config
        return self

    def set_module_type(
        self, module_type: Callable, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for everything traced inside modules of ``module_type``."""
        self.module_type_config[module_type] = quantization_config
        return self

    def set_module_name(
        self, module_name: str, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for everything inside the submodule at ``module_name`` (``None``: keep float)."""
        self.module_name_config[module_name] = quantization_config
        return self

    def set_filter_function(self, filter_fn: Callable[[Node], bool]) -> XNNPACKQuantizer:
        """Only quantize nodes for which ``filter_fn(node)`` is true."""
        self.filter_fn = filter_fn
        return self

    @classmethod
    def get_supported_quantization_configs(cls) -> list[QuantizationConfig]:
        """The configs this quantizer is tested with (as in ExecuTorch)."""
        return [
            get_symmetric_quantization_config(is_per_channel=pc, is_qat=qat)
            for pc in (False, True) for qat in (False, True)
        ]

    @classmethod
    def get_supported_operators(cls) -> list[OperatorConfig]:
        """``OperatorConfig`` entries pairing each supported config with its operator patterns."""
        ops: list[list[Callable]] = [[torch.nn.Conv2d, torch.nn.ReLU], [torch.nn.Conv2d], [torch.nn.Linear],
               [torch.nn.Linear, torch.nn.ReLU], [torch.add], [torch.nn.AdaptiveAvgPool2d]]
        return [OperatorConfig(cfg, ops) for cfg in cls.get_supported_quantization_configs()]

    # ---- the Quantizer contract

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Turn scalar operands of add/mul into constants so both operands can be quantized."""
        changed = False
        for node in list(model.graph.nodes):
            if node.op != "call_function" or node.target not in ADD_OPS | MUL_OPS:
                continue
            val = node.meta.get("val")
            # only float arithmetic: an int counter (BatchNorm's num_batches_tracked += 1) stays as is
            if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
                continue
            if not any(isinstance(a, (int, float)) for a in node.args[:2]):
                continue
            args = list(node.args)
            for i, a in enumerate(args[:2]):
                if isinstance(a, bool) or not isinstance(a, (int, float)):
                    continue
                name = _free_attr_name(model, "_xnnpack_scalar_")
                const = torch.tensor(float(a))
                model.register_buffer(name, const)
                with model.graph.inserting_before(node):
                    attr = model.graph.get_attr(name)
                fake_mode: Any = getattr(val, "fake_mode", None)
                attr.meta["val"] = (
                    fake_mode.from_tensor(const, static_shapes=True) if fake_mode is not None else const
                )
                args[i] = attr
                changed = True
            node.args = tuple(args)
        if changed:
            model.recompile()
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate by precedence (module name, module type, operator type, global), then
        let layout/clamp ops reuse their producer's qparams."""
        ctx = AnnotationContext()
        covered: dict[Node, QuantizationConfig] = {}
        names, types = list(self.module_name_config), list(self.module_type_config)
        for name, cfg in self.module_name_config.items():
            self._annotate_stage(model, cfg, ctx, get_module_name_filter(name), None, covered)
        for tp, cfg in self.module_type_config.items():
            self._annotate_stage(model, cfg, ctx, get_module_type_filter(tp), None, covered)
        rest = get_not_module_type_or_name_filter(types, names)
        for op, cfg in self.operator_type_config.items():
            self._annotate_stage(model, cfg, ctx, rest, op, covered)
        self._annotate_stage(model, self.global_config, ctx, rest, None, covered)
        propagate_shared_qparams(model)
        self._report_skipped(covered)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check after annotation: the configs are validated when built."""

    # ---- internals

    def _annotate_stage(
        self,
        model: GraphModule,
        config: QuantizationConfig | None,
        ctx: AnnotationContext,
        node_filter: Callable[[Node], bool],
        operator: Any,
        covered: dict[Node, QuantizationConfig],
    ) -> None:
        def selected(match: Match) -> bool:
            if operator is not None and not _matches_operator(match.anchor.target, operator):
                return False
            return all(node_filter(n) and (self.filter_fn is None or self.filter_fn(n))
                       for n in match.nodes)

        dynamic = _is_dynamic(config)
        for match in XNNPACK_PATTERNS.matches(model.graph):
            if any_annotated(match.nodes) or not selected(match):
                continue
            if config is None:
                mark_not_quantized(match.nodes)
                continue
            if match.anchor.target in WEIGHTED_OPS:
                covered.setdefault(match.anchor, config)
            if dynamic and not match.pattern.dynamic:
                continue
            match.pattern.annotator(match, config, ctx)

    def _report_skipped(self, covered: dict[Node, QuantizationConfig]) -> None:
        self.skipped = []
        for node, config in covered.items():
            reason = None if is_annotated(node) else unsupported_reason(node, config)
            if reason is None:
                continue
            stack = module_stack(node)
            self.skipped.append(UnquantizedOp(
                node=node.name, op=str(node.target), module=stack[-1][0] if stack else "",
                reason=reason,
            ))
        if self.skipped:
            lines = "\n".join(f"  {s}" for s in self.skipped)
            warnings.warn(
                f"XNNPACKQuantizer left {len(self.skipped)} layer(s) in float:\n{lines}\n"
                "Give them a static config (set_module_name/set_module_type) to quantize them.",
                XnnpackSkipWarning,
                stacklevel=3,
            )


def _is_dynamic(config: QuantizationConfig | None) -> bool:
    act = None if config is None else config.input_activation
    return bool(act is not None and act.is_dynamic)


def _free_attr_name(model: GraphModule, prefix: str) -> str:
    i = 0
    while hasattr(model, f"{prefix}{i}"):
        i += 1
    return f"{prefix}{i}"
