"""``quantize_``: swap the weights of a model's ``nn.Linear`` layers for quantized ones, in place.

Same call as torchao's ``quantize_(model, config, filter_fn=None, device=None)``.
Each ``nn.Linear`` stays an ``nn.Linear``; its ``weight`` becomes a
:mod:`quantizers.eager.tensors` subclass and its repr shows it. Which config builds
which weight is a table of handlers registered by config type
(:func:`register_quantize_module_handler`).

Deliberate differences from torchao: a layer that cannot be quantized as asked
(``in_features`` not a multiple of the int4 group size) raises
:class:`~pt2e.errors.QuantizationConfigError` naming the layer instead of being
skipped with a log line; ``set_inductor_config`` changes no global Inductor setting.

>>> import torch
>>> from quantizers.eager import Int8WeightOnlyConfig
>>> m = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> quantize_(m, Int8WeightOnlyConfig(), filter_fn=lambda mod, fqn: fqn == "0")
>>> m[0]
Linear(in_features=32, out_features=16, bias=True, weight=Int8WeightTensor(shape=(16, 32), dtype=torch.float32, int8 symmetric per_row, layout=plain, kernel=int8_weight_only_cpu_via_bf16))
>>> type(m[2].weight) is torch.nn.Parameter
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from observers.errors import ArgumentTypeError, Pt2eError, UnsupportedOperationError

from .configs import (
    EagerQuantizationConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    MappingType,
    PerRow,
)
from .tensors import (
    Int4WeightTensor,
    Int8DynamicWeightTensor,
    Int8WeightTensor,
    QuantizedLinearWeight,
)

__all__ = ["quantize_", "register_quantize_module_handler"]

FilterFn = Callable[[nn.Module, str], bool]
Handler = Callable[[nn.Linear, Any], QuantizedLinearWeight]
_C = TypeVar("_C", bound=EagerQuantizationConfig)

_HANDLERS: dict[type[EagerQuantizationConfig], Handler] = {}


def register_quantize_module_handler(
    config_type: type[_C],
) -> Callable[[Callable[[nn.Linear, _C], QuantizedLinearWeight]], Callable[[nn.Linear, _C], QuantizedLinearWeight]]:
    """Register the function that builds a quantized weight from an ``nn.Linear`` for ``config_type``.

    >>> sorted(t.__name__ for t in _HANDLERS)
    ['Int4WeightOnlyConfig', 'Int8DynamicActivationInt8WeightConfig', 'Int8WeightOnlyConfig']
    """
    def register(
        fn: Callable[[nn.Linear, _C], QuantizedLinearWeight],
    ) -> Callable[[nn.Linear, _C], QuantizedLinearWeight]:
        _HANDLERS[config_type] = fn  # type: ignore[assignment]
        return fn
    return register


@register_quantize_module_handler(Int4WeightOnlyConfig)
def _int4_weight(module: nn.Linear, config: Int4WeightOnlyConfig) -> QuantizedLinearWeight:
    return Int4WeightTensor.from_float(module.weight, group_size=config.group_size)


def _granularity_name(g: object) -> str:
    return "per_row" if isinstance(g, PerRow) else "per_tensor"


@register_quantize_module_handler(Int8WeightOnlyConfig)
def _int8_weight(module: nn.Linear, config: Int8WeightOnlyConfig) -> QuantizedLinearWeight:
    return Int8WeightTensor.from_float(module.weight, granularity=_granularity_name(config.granularity))


@register_quantize_module_handler(Int8DynamicActivationInt8WeightConfig)
def _int8_dynamic_weight(
    module: nn.Linear, config: Int8DynamicActivationInt8WeightConfig
) -> QuantizedLinearWeight:
    return Int8DynamicWeightTensor.from_float(
        module.weight,
        granularity=_granularity_name(config.weight_granularity),
        reduce_range=bool(config.reduce_range),
        act_granularity=_granularity_name(config.activation_granularity),
        act_mapping="asymmetric" if config.act_mapping_type is MappingType.ASYMMETRIC else "symmetric",
    )


def _is_linear(module: nn.Module, fqn: str) -> bool:
    """The default filter: every ``nn.Linear`` whose weight is not quantized yet.

    ``NonDynamicallyQuantizableLinear`` (``nn.MultiheadAttention.out_proj``, whose
    weight the attention reads directly) is left alone, as in torchao.

    >>> _is_linear(torch.nn.Linear(2, 2), "fc"), _is_linear(torch.nn.ReLU(), "act")
    (True, False)
    """
    return (
        isinstance(module, nn.Linear)
        and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)
        and not isinstance(module.weight, QuantizedLinearWeight)
    )


class _QuantizedLinearRepr:
    """``extra_repr`` of a quantized ``nn.Linear``: the usual fields plus the weight's repr.

    An object rather than a bound method so that the module still pickles and deep-copies.
    """

    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def __call__(self) -> str:
        m = self.module
        return (f"in_features={m.in_features}, out_features={m.out_features}, "
                f"bias={m.bias is not None}, weight={m.weight!r}")


def quantize_(
    model: nn.Module,
    config: EagerQuantizationConfig,
    filter_fn: FilterFn | None = _is_linear,
    device: torch.types.Device | None = None,
) -> None:
    """Quantize, in place, the weight of every ``nn.Linear`` of ``model`` that ``filter_fn`` selects.

    ``filter_fn(module, fqn)`` gets every submodule and its qualified name
    (``None``: every ``nn.Linear``); a selected module that is not an
    ``nn.Linear`` is an error. ``device`` moves the model there first (only
    devices with kernels, i.e. ``"cpu"``). The weights' dtype is the model's:
    call ``model.to(dtype)`` before or after. Errors name the layer.

    >>> import torch
    >>> from quantizers.eager import Int4WeightOnlyConfig
    >>> m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8)).to(torch.bfloat16)
    >>> quantize_(m, Int4WeightOnlyConfig(group_size=32))
    >>> m[1].weight
    Int4WeightTensor(shape=(8, 32), dtype=torch.bfloat16, group_size=32, layout=tinygemm_cpu[...], kernel=int4_tinygemm_cpu)
    >>> m(torch.randn(2, 64, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"quantize_: model must be an nn.Module, got {type(model).__name__}.")
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise ArgumentTypeError(
            f"quantize_: config {type(config).__module__}.{type(config).__name__} is not supported; "
            f"pass one of quantizers.eager's {known}."
        )
    if device is not None:
        if torch.device(device).type != "cpu":
            raise UnsupportedOperationError(
                f"quantize_: device={device!r} has no kernels in this workflow; allowed: 'cpu'."
            )
        model.to(device)
    chooser = _is_linear if filter_fn is None else filter_fn
    for fqn, module in list(model.named_modules()):
        if not chooser(module, fqn):
            continue
        where = fqn or "<root>"
        if not isinstance(module, nn.Linear):
            raise ArgumentTypeError(
                f"quantize_: filter_fn selected {where} ({type(module).__name__}); only nn.Linear "
                "layers can be quantized by this workflow."
            )
        if isinstance(module.weight, QuantizedLinearWeight):
            continue  # already quantized (a custom filter_fn on a model quantized before)
        try:
            weight = handler(module, config)
        except Pt2eError as err:
            raise type(err)(f"quantize_: layer {where!r}: {err}") from None
        module.weight = nn.Parameter(weight, requires_grad=False)
        module.extra_repr = _QuantizedLinearRepr(module)  # type: ignore[method-assign]
