"""Bundles of specs a backend applies to an operator: activation, weight, bias."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, NamedTuple

from observers.facts import ACTIVATION_QSCHEMES, BIAS_DTYPES, WEIGHT_QSCHEMES
from observers.validation import check_dtype, check_qscheme

from .spec import QuantizationSpec

__all__ = [
    "QuantizationConfig",
    "OperatorConfig",
    "OperatorPatternType",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
]



@dataclass(eq=True, frozen=True)
class QuantizationConfig:
    """How a quantizer treats one operator's activations, weight and bias.

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
    ...                        qscheme=torch.per_tensor_affine,
    ...                        observer_or_fake_quant_ctr=MinMaxObserver)
    >>> cfg = QuantizationConfig(act, act, weight=None, bias=None)
    >>> get_input_act_qspec(cfg) is act, get_weight_qspec(cfg)
    (True, None)
    """

    input_activation: QuantizationSpec | None
    output_activation: QuantizationSpec | None
    weight: QuantizationSpec | None
    bias: QuantizationSpec | None
    is_qat: bool = False


OperatorPatternType = Annotated[list[Callable], None]


class OperatorConfig(NamedTuple):
    """A config and the operator patterns it applies to (informational, as in torchao)."""

    config: QuantizationConfig
    operators: list[OperatorPatternType]


def _act(spec: QuantizationSpec | None, field: str) -> QuantizationSpec | None:
    if spec is not None:
        check_qscheme(spec.qscheme, ACTIVATION_QSCHEMES, owner=f"QuantizationConfig.{field}",
                      hint="Activations are quantized per tensor.")
    return spec


def get_input_act_qspec(quantization_config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The input-activation spec of ``quantization_config`` (``None`` when not quantized).

    The argument has torchao's name, so keyword calls port unchanged:

    >>> get_input_act_qspec(quantization_config=None) is None
    True
    """
    config = quantization_config
    return None if config is None else _act(config.input_activation, "input_activation")


def get_output_act_qspec(quantization_config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The output-activation spec of ``quantization_config`` (``None`` when not quantized).

    >>> get_output_act_qspec(QuantizationConfig(None, None, None, None)) is None
    True
    """
    config = quantization_config
    return None if config is None else _act(config.output_activation, "output_activation")


def get_weight_qspec(quantization_config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The weight spec of ``quantization_config``; weights must be symmetric (per tensor or per channel).

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> w = QuantizationSpec(dtype=torch.int8, qscheme=torch.per_tensor_affine,
    ...                      observer_or_fake_quant_ctr=MinMaxObserver)
    >>> get_weight_qspec(QuantizationConfig(None, None, w, None))
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: QuantizationConfig.weight: qscheme=torch.per_tensor_affine is not supported; allowed: torch.per_tensor_symmetric, torch.per_channel_symmetric, None. Weights are quantized symmetrically.
    """
    config = quantization_config
    if config is None or config.weight is None:
        return None
    check_qscheme(config.weight.qscheme, WEIGHT_QSCHEMES, owner="QuantizationConfig.weight",
                  hint="Weights are quantized symmetrically.")
    return config.weight


def get_bias_qspec(quantization_config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The bias spec of ``quantization_config``; only float (unquantized) bias is supported, as in torchao.

    >>> get_bias_qspec(QuantizationConfig(None, None, None, None)) is None
    True
    """
    config = quantization_config
    if config is None or config.bias is None:
        return None
    check_dtype(config.bias.dtype, BIAS_DTYPES, owner="QuantizationConfig.bias",
                hint="Bias stays float; use a DerivedQuantizationSpec for an integer bias.")
    return config.bias
