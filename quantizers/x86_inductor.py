"""X86InductorQuantizer: int8 recipes that Inductor lowers to oneDNN kernels on x86 CPUs.

Same public API as ``torchao.quantization.pt2e.quantizer.X86InductorQuantizer``
(``set_global``, ``set_module_type_qconfig``, ``set_module_name_qconfig``,
``set_function_type_qconfig``; precedence module name > operator type > global, as
stated in :mod:`quantizers.engine`), written as a pattern table on the shared engine:
:data:`X86_PATTERNS` plus :func:`get_default_x86_inductor_quantization_config`. Deliberate differences from torchao, all tested:

* patterns match ATen node structure, not source partitions, so a module
  instance called twice (one ``self.relu`` per ResNet block) annotates under
  non-strict ``torch.export``, and the projections of ``nn.MultiheadAttention`` /
  ``nn.TransformerEncoderLayer`` (``F.linear`` calls) are quantized;
* the dynamic config quantizes ``linear`` only (dynamically quantized convs lose
  accuracy, pytorch/ao#4292);
* mixing static and dynamic configs, or naming a module/function type the
  quantizer does not know, raises :class:`~pt2e.errors.QuantizationConfigError`
  instead of warning and ignoring the call (QAT and PTQ configs may be mixed: under
  ``prepare_qat_pt2e`` the PTQ parts get observers, which calibrate while training);
* ops left float are listed by :meth:`X86InductorQuantizer.report`;
* importing this module changes no ``torch._inductor`` setting.

>>> import torch
>>> from pt2e.quantizer import get_annotation
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
>>> gm = torch.export.export(m, (torch.randn(1, 3, 8, 8),)).module()
>>> q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
>>> _ = q.annotate(gm)
>>> conv = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default)
>>> sorted(a.op for a in get_annotation(conv).input_qspec_map)   # activation and weight
['get_attr', 'placeholder']
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node

from observers import PlaceholderObserver
from pt2e.cpu import cpu_has_vnni
from pt2e.errors import QuantizationConfigError
from pt2e.quantizer import QuantizationConfig, QuantizationSpec

from .annotators import (
    AnnotationContext,
    annotate_all_tensor_inputs,
    annotate_shared_qparams_op,
    annotate_weighted_pattern,
    mark_quantized_pattern_output,
)
from .engine import TableQuantizer, activation_observer, is_dynamic_config, weight_observer
from .patterns import (
    ADD_OPS,
    BATCH_NORM_OPS,
    CAT_OPS,
    CONV_OPS,
    CONV_UNARY_OPS,
    LINEAR_OPS,
    LINEAR_UNARY_OPS,
    MATMUL_OPS,
    POOL_OPS,
    RELU_OPS,
    RESHAPE_OPS,
    Match,
    PatternTable,
    Step,
    is_tensor_node,
)

__all__ = [
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "x86_needs_reduce_range",
    "X86_PATTERNS",
]

aten = torch.ops.aten
_EPS = 2**-12  # the smallest scale oneDNN's requantization handles well


def x86_needs_reduce_range() -> bool:
    """Whether this CPU needs ``reduce_range=True`` (7-bit activations) for correct int8 results.

    Without VNNI, oneDNN multiplies uint8 activations by int8 weights with an
    instruction whose int16 pair sums saturate for activations above 127; the
    compiled model then silently loses 10-25 dB of SQNR. ``torch.cpu`` reports VNNI.

    >>> isinstance(x86_needs_reduce_range(), bool)
    True
    """
    return not cpu_has_vnni()


@functools.lru_cache
def get_default_x86_inductor_quantization_config(
    is_qat: bool = False,
    is_dynamic: bool = False,
    reduce_range: bool = False,
) -> QuantizationConfig:
    """The x86 recipe: uint8 per-tensor affine activations, int8 per-channel symmetric weights.

    Static PTQ observes activations with a histogram; dynamic computes activation
    qparams at run time (``choose_qparams``); QAT uses fake quantizers.
    ``reduce_range=True`` limits activations to 0..127 for CPUs without VNNI
    (see :func:`x86_needs_reduce_range`); the default stays ``False`` as in torchao.

    >>> cfg = get_default_x86_inductor_quantization_config()
    >>> cfg.input_activation.dtype, cfg.weight.qscheme
    (torch.uint8, torch.per_channel_symmetric)
    >>> get_default_x86_inductor_quantization_config(is_dynamic=True).input_activation.is_dynamic
    True
    """
    act = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=127 if reduce_range else 255,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=activation_observer(is_qat=is_qat, is_dynamic=is_dynamic, eps=_EPS),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=weight_observer(is_qat=is_qat, per_channel=True, eps=_EPS),
    )
    return QuantizationConfig(act, act, weight, None, is_qat)


@functools.lru_cache
def get_x86_inductor_linear_dynamic_fp16_config() -> QuantizationConfig:
    """fp16 weights, float activations: ``fp32 x @ (fp16 w -> fp32)`` (torchao's "linear_dynamic_fp16").

    Only the weight is annotated (a ``float16`` spec with a placeholder observer);
    ``convert_pt2e`` casts it to fp16 and back, and Inductor's freezing passes turn
    that linear into oneDNN's ``linear_dynamic_fp16`` (``linear_relu_dynamic_fp16``
    with a relu) on the fp16 weight. Same name and (no) arguments as torchao; meant
    for linear layers (``set_module_type_qconfig(torch.nn.Linear, ...)`` or global).

    >>> cfg = get_x86_inductor_linear_dynamic_fp16_config()
    >>> cfg.weight.dtype, cfg.input_activation, cfg.output_activation
    (torch.float16, None, None)
    """
    weight = QuantizationSpec(dtype=torch.float16, observer_or_fake_quant_ctr=PlaceholderObserver)
    return QuantizationConfig(None, None, weight, None)


# --- the pattern table -------------------------------------------------------------------------
# Priority: longer fusions first so they claim their nodes before the shorter ones;
# int8-preserving ops last, in graph order, because they quantize only behind a
# pattern that already produces int8.

X86_PATTERNS = PatternTable()
_BN = Step(role="bn", ops=BATCH_NORM_OPS, optional=True)
_ADD = Step(role="binary", ops=ADD_OPS)
# ops that read an int8 activation directly: a reshape in front of them stays int8
_INT8_CONSUMERS = CONV_OPS | LINEAR_OPS | MATMUL_OPS | POOL_OPS | CAT_OPS


def _fused(*, quantize_binary_input: bool) -> Callable[[Match, QuantizationConfig, AnnotationContext], None]:
    def annotate(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
        # QAT places q/dq as PTQ does: torchao also quantizes a QAT conv-bn pattern's output
        # (a TODO workaround for its QAT pattern matcher), an extra q/dq where no consumer
        # wants int8 (issue 16); a consumer that does quantizes its input as in PTQ
        annotate_weighted_pattern(
            match, config, ctx,
            quantize_binary_input=quantize_binary_input and not is_dynamic_config(config),
        )
        mark_quantized_pattern_output(match.last)

    return annotate


X86_PATTERNS.register(
    name="conv_add_relu", anchor=CONV_OPS, priority=100,
    chain=(_BN, _ADD, Step(role="unary", ops=RELU_OPS)),
)(_fused(quantize_binary_input=True))
X86_PATTERNS.register(name="conv_add", anchor=CONV_OPS, priority=90, chain=(_BN, _ADD))(
    _fused(quantize_binary_input=True)
)
X86_PATTERNS.register(
    name="conv_unary", anchor=CONV_OPS, priority=80,
    chain=(_BN, Step(role="unary", ops=CONV_UNARY_OPS)),
)(_fused(quantize_binary_input=True))
X86_PATTERNS.register(name="conv", anchor=CONV_OPS, priority=70, chain=(_BN,))(
    _fused(quantize_binary_input=True)
)
# linear + add: the extra operand stays float (quantizing it costs accuracy, as in torchao)
X86_PATTERNS.register(
    name="linear_add_relu", anchor=LINEAR_OPS, priority=60, dynamic=True,
    chain=(_ADD, Step(role="unary", ops=RELU_OPS)),
)(_fused(quantize_binary_input=False))
X86_PATTERNS.register(
    name="linear_add", anchor=LINEAR_OPS, priority=55, dynamic=True, chain=(_ADD,)
)(_fused(quantize_binary_input=False))
X86_PATTERNS.register(
    name="linear_unary", anchor=LINEAR_OPS, priority=50, dynamic=True,
    chain=(Step(role="unary", ops=LINEAR_UNARY_OPS),),
)(_fused(quantize_binary_input=False))
X86_PATTERNS.register(name="linear", anchor=LINEAR_OPS, priority=45, dynamic=True)(
    _fused(quantize_binary_input=False)
)


# Attention matmuls have no int8 kernel in Inductor (q/dq around them only adds
# work), so as in torchao they are opt-in: set_function_type_qconfig(torch.matmul, cfg)
# or a module-name config.
@X86_PATTERNS.register(name="matmul", anchor=MATMUL_OPS, priority=30, default=False)
def _annotate_matmul(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    if annotate_all_tensor_inputs(match.anchor, config, ctx):
        mark_quantized_pattern_output(match.anchor)


@X86_PATTERNS.register(name="mul", anchor=frozenset({aten.mul.Tensor}), priority=20)
def _annotate_mul(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    a, b = (match.anchor.args + (None, None))[:2]
    if isinstance(a, Node) and isinstance(b, Node) and is_tensor_node(a) and is_tensor_node(b):
        if a.meta["val"].shape == b.meta["val"].shape:
            if annotate_all_tensor_inputs(match.anchor, config, ctx):
                mark_quantized_pattern_output(match.anchor)


@X86_PATTERNS.register(name="int8_passthrough", anchor=POOL_OPS | CAT_OPS | RESHAPE_OPS, priority=10)
def _annotate_passthrough(match: Match, config: QuantizationConfig, ctx: AnnotationContext) -> None:
    if annotate_shared_qparams_op(match.anchor, config, ctx, int8_consumers=_INT8_CONSUMERS):
        mark_quantized_pattern_output(match.anchor)


# module/function type -> the ATen ops it exports to (torchao's mapping, plus conv1d and bmm)
_TYPE_TO_OPS: dict[Any, frozenset[Any]] = {}
for _keys, _ops in (
    ((torch.nn.Conv1d, F.conv1d), frozenset({aten.conv1d.default, aten.conv1d.padding})),
    ((torch.nn.Conv2d, F.conv2d), frozenset({aten.conv2d.default, aten.conv2d.padding})),
    ((torch.nn.Linear, F.linear), LINEAR_OPS),
    ((torch.nn.MaxPool2d, F.max_pool2d), frozenset({aten.max_pool2d.default})),
    ((torch.nn.AvgPool2d, F.avg_pool2d), frozenset({aten.avg_pool2d.default})),
    ((torch.nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d), frozenset({aten.adaptive_avg_pool2d.default})),
    ((torch.cat,), CAT_OPS),
    ((torch.flatten, torch.nn.Flatten), frozenset({aten.flatten.using_ints})),
    ((torch.matmul, torch.bmm), MATMUL_OPS),
    ((torch.mul,), frozenset({aten.mul.Tensor})),
):
    for _k in _keys:
        _TYPE_TO_OPS[_k] = _ops

_REASONS = {
    MATMUL_OPS: "activation matmuls are opt-in: set_function_type_qconfig(torch.matmul, config)",
    frozenset({aten.scaled_dot_product_attention.default}): "no int8 SDPA kernel in Inductor",
}

class X86InductorQuantizer(TableQuantizer):
    """Annotate an exported model for int8 inference through Inductor on x86 (oneDNN).

    >>> import torch
    >>> q = X86InductorQuantizer()
    >>> q = q.set_global(get_default_x86_inductor_quantization_config())
    >>> q = q.set_module_type_qconfig(torch.nn.Linear, None)   # keep every linear float
    >>> q = q.set_module_name_qconfig("head", get_default_x86_inductor_quantization_config())
    >>> list(q.module_name_qconfig)
    ['head']

    What stays float, and why (:meth:`report`, from the shared engine):

    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv1d(1, 1, 1))
    >>> gm = torch.export.export(m, (torch.randn(1, 4),)).module()
    >>> q = X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config(is_dynamic=True))
    >>> print(q.report(gm))
    X86InductorQuantizer: 1 compute op(s) stay float
      conv1d (aten.conv1d.default in '1'): the dynamic config quantizes linear only (pytorch/ao#4292)
    """

    # the pattern table is the backend: a quantizer that differs only in its rows
    # (XPUInductorQuantizer) sets another table here
    patterns = X86_PATTERNS
    float_reasons = _REASONS

    # torchao's attribute names for the engine's config dicts
    @property
    def module_name_qconfig(self) -> dict[str, QuantizationConfig | None]:
        return self.module_name_config

    @property
    def operator_type_qconfig(self) -> dict[Any, QuantizationConfig | None]:
        return self.operator_type_config

    # --- configuration (torchao-compatible) ---------------------------------------------------

    def check_config(self, config: QuantizationConfig | None, where: str) -> None:
        """Refuse a config whose static/dynamic mode differs from those already set.

        QAT and PTQ configs may be mixed (e.g. fine-tune one block, calibrate the rest):
        under prepare_qat_pt2e the PTQ parts get observers, which calibrate while training.
        """
        if config is None or config.input_activation is None:
            return
        for other in self.configs():
            if other.input_activation is not None and is_dynamic_config(other) != is_dynamic_config(config):
                raise QuantizationConfigError(
                    f"{where}: mixing dynamic (is_dynamic=True) and static activation configs "
                    "is not supported; build every config with the same is_dynamic"
                )

    def set_global(self, quantization_config: QuantizationConfig | None) -> X86InductorQuantizer:
        """Config for every supported pattern not claimed by a more specific setting."""
        return self._set_global(quantization_config)

    def get_global_quantization_config(self) -> QuantizationConfig | None:
        return self.global_config

    def _ops_for(self, key: Any, where: str) -> frozenset[Any]:
        ops = _TYPE_TO_OPS.get(key)
        if ops is None:
            known = sorted(getattr(k, "__name__", str(k)) for k in _TYPE_TO_OPS)
            raise QuantizationConfigError(
                f"{where}({key!r}): {type(self).__name__} has no pattern for this type; "
                f"supported: {known}. Use set_module_name_qconfig for a specific submodule"
            )
        return ops

    def set_function_type_qconfig(
        self, function_type: Callable, quantization_config: QuantizationConfig | None
    ) -> X86InductorQuantizer:
        """Config for every op of a function type (``torch.matmul``, ``F.linear``...)."""
        where = "set_function_type_qconfig"
        return self._set_operator_type(self._ops_for(function_type, where), quantization_config, where)

    def set_module_type_qconfig(
        self, module_type: Any, quantization_config: QuantizationConfig | None
    ) -> X86InductorQuantizer:
        """Config for every op a module type exports to (``nn.Linear`` covers every ``aten.linear``).

        As in torchao this is by operator type: ``F.linear`` calls count too.
        """
        where = "set_module_type_qconfig"
        return self._set_operator_type(self._ops_for(module_type, where), quantization_config, where)

    def set_module_name_qconfig(
        self, module_name: str, quantization_config: QuantizationConfig | None
    ) -> X86InductorQuantizer:
        """Config for every pattern entirely inside the submodule ``module_name`` (highest precedence)."""
        return self._set_module_name(module_name, quantization_config, "set_module_name_qconfig")

    def reasons(self) -> dict[frozenset[Any], str]:
        reasons = dict(self.float_reasons)
        if any(is_dynamic_config(c) for c in self.configs()):
            reasons[CONV_OPS] = "the dynamic config quantizes linear only (pytorch/ao#4292)"
        return reasons
