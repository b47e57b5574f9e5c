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

from pt2e.errors import QuantizationConfigError
from pt2e.graph import register_constant
from pt2e.quantizer import OperatorConfig, QuantizationConfig, QuantizationSpec
from pt2e.report import OpRecord

from .engine import TableQuantizer, activation_observer, weight_observer
from .patterns import ADD_OPS
from .xnnpack_annotators import MUL_OPS, WEIGHTED_OPS, XNNPACK_PATTERNS, unsupported_reason

__all__ = [
    "XNNPACKQuantizer",
    "XNNPACK_PATTERNS",
    "XnnpackSkipWarning",
    "get_symmetric_quantization_config",
]

_EPS = 2**-12  # the smallest scale XNNPACK's requantization handles well


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
    equal arguments give the same object, however they are spelled (positionally,
    by keyword, defaults left out). ``weight_qmin=-8, weight_qmax=7`` with
    ``is_per_channel=True`` gives 4-bit weights (XNNPACK's ``qc4w`` kernels; use it
    with ``is_dynamic=True`` for linear layers). Any other range is accepted, as
    ExecuTorch does, e.g. ``weight_qmin=0, weight_qmax=15`` (unsigned 4-bit weights,
    as in ExecuTorch's tests); XNNPACK has no kernel for it (its int8 path would clamp
    every negative weight to 0), so ``lowering.to_executorch`` refuses such a graph
    with ``XnnpackLoweringError``, naming the layer.

    >>> cfg = get_symmetric_quantization_config(is_per_channel=True)
    >>> cfg.weight.qscheme, cfg.weight.quant_min, cfg.input_activation.dtype
    (torch.per_channel_symmetric, -127, torch.int8)
    >>> get_symmetric_quantization_config(is_dynamic=True).output_activation is None
    True
    >>> get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7)
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7) asks for 4-bit weights, which XNNPACK supports per channel only; pass is_per_channel=True
    """
    return _symmetric_config(is_per_channel, is_qat, is_dynamic, act_qmin, act_qmax, weight_qmin, weight_qmax)


@functools.lru_cache
def _symmetric_config(
    is_per_channel: bool,
    is_qat: bool,
    is_dynamic: bool,
    act_qmin: int,
    act_qmax: int,
    weight_qmin: int,
    weight_qmax: int,
) -> QuantizationConfig:
    if (weight_qmin, weight_qmax) == (-8, 7) and not is_per_channel:
        raise QuantizationConfigError(
            "get_symmetric_quantization_config(weight_qmin=-8, weight_qmax=7) asks for 4-bit "
            "weights, which XNNPACK supports per channel only; pass is_per_channel=True"
        )
    act = QuantizationSpec(
        dtype=torch.int8, quant_min=act_qmin, quant_max=act_qmax,
        qscheme=torch.per_tensor_affine, is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=activation_observer(is_qat=is_qat, is_dynamic=is_dynamic, eps=_EPS),
    )
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=weight_qmin, quant_max=weight_qmax,
        qscheme=torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric,
        ch_axis=0, is_dynamic=False,
        observer_or_fake_quant_ctr=weight_observer(is_qat=is_qat, per_channel=is_per_channel, eps=_EPS),
    )
    return QuantizationConfig(act, None if is_dynamic else act, weight, None, is_qat)


class XnnpackSkipWarning(UserWarning):
    """A layer the chosen config covers could not be quantized for XNNPACK (it stays float)."""


class XNNPACKQuantizer(TableQuantizer):
    """Annotate an exported model for XNNPACK's int8 kernels (ExecuTorch's delegate).

    >>> import torch
    >>> q = XNNPACKQuantizer()
    >>> q = q.set_global(get_symmetric_quantization_config())
    >>> q = q.set_module_type(torch.nn.Conv2d, get_symmetric_quantization_config(is_per_channel=True))
    >>> q.set_module_name("head", None) is q
    True
    """

    patterns = XNNPACK_PATTERNS
    # ExecuTorch's rule: a module named or typed in a config is governed by that config only
    exclusive_module_scopes = True
    tracked_ops = WEIGHTED_OPS

    # ---- configuration (same names and argument order as ExecuTorch's quantizer)

    def set_global(self, quantization_config: QuantizationConfig | None) -> XNNPACKQuantizer:
        """Config for every node no more specific setting covers."""
        return self._set_global(quantization_config)

    def set_operator_type(
        self, operator_type: Any, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for patterns built on ``operator_type`` (``torch.ops.aten.linear.default``
        or the packet ``torch.ops.aten.linear``)."""
        return self._set_operator_type(operator_type, quantization_config, "set_operator_type")

    def set_module_type(
        self, module_type: Callable, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for everything traced inside modules of ``module_type``."""
        return self._set_module_type(module_type, quantization_config, "set_module_type")

    def set_module_name(
        self, module_name: str, quantization_config: QuantizationConfig | None
    ) -> XNNPACKQuantizer:
        """Config for everything inside the submodule at ``module_name`` (``None``: keep float)."""
        return self._set_module_name(module_name, quantization_config, "set_module_name")

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

    @classmethod
    def get_supported_operator_for_quantization_config(
        cls, quantization_config: QuantizationConfig | None
    ) -> list[list[Callable]]:
        """The operator patterns supported with ``quantization_config`` (``None``: every pattern).

        >>> ops = XNNPACKQuantizer.get_supported_operator_for_quantization_config(
        ...     get_symmetric_quantization_config(is_per_channel=True))
        >>> [torch.nn.Linear] in ops, XNNPACKQuantizer.get_supported_operator_for_quantization_config(
        ...     get_symmetric_quantization_config(is_dynamic=True))
        (True, [])
        """
        entries = cls.get_supported_operators()
        if quantization_config is None:
            return [ops for entry in entries for ops in entry.operators]
        return next((list(e.operators) for e in entries if e.config == quantization_config), [])

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
                const = torch.tensor(float(a))
                name = register_constant(model, "_xnnpack_scalar_", const, numbered=True)
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

    def unsupported_reason(self, node: Node, config: QuantizationConfig) -> str | None:
        """XNNPACK's limits (depthwise/3-D dynamic convs, grouped per-channel transposed convs)."""
        return unsupported_reason(node, config)

    def report_skipped(self, skipped: list[OpRecord]) -> None:
        """Warn with :class:`XnnpackSkipWarning`, listing each layer and why."""
        lines = "\n".join(f"  {s}" for s in skipped)
        warnings.warn(
            f"XNNPACKQuantizer left {len(skipped)} layer(s) in float:\n{lines}\n"
            "Give them a static config (set_module_name/set_module_type) to quantize them.",
            XnnpackSkipWarning,
            stacklevel=4,
        )
