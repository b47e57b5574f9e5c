"""Ready-made observer and fake-quantize constructors, with torchao's names and settings.

Each is a class or a :class:`~observers.factory.PartialWrapper`; call it to get a
fresh module.

>>> import torch
>>> from observers import default_per_channel_weight_observer
>>> obs = default_per_channel_weight_observer()
>>> obs.dtype, obs.qscheme, obs.ch_axis
(torch.qint8, torch.per_channel_symmetric, 0)
"""

from __future__ import annotations

from typing import Any

import torch

from observers.factory import PartialWrapper
from observers.fake_quantize import (
    FakeQuantize,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
)
from observers.histogram import HistogramObserver
from observers.minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from observers.simple import (
    FixedQParamsObserver,
    PlaceholderObserver,
    RecordingObserver,
    ReuseInputObserver,
)

__all__ = [
    "default_affine_fixed_qparams_fake_quant",
    "default_affine_fixed_qparams_observer",
    "default_debug_observer",
    "default_dynamic_fake_quant",
    "default_dynamic_quant_observer",
    "default_embedding_fake_quant",
    "default_embedding_fake_quant_4bit",
    "default_fake_quant",
    "default_fixed_qparams_range_0to1_fake_quant",
    "default_fixed_qparams_range_0to1_observer",
    "default_fixed_qparams_range_neg1to1_fake_quant",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_fused_act_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "default_fused_wt_fake_quant",
    "default_histogram_fake_quant",
    "default_histogram_observer",
    "default_observer",
    "default_per_channel_weight_fake_quant",
    "default_per_channel_weight_observer",
    "default_placeholder_observer",
    "default_reuse_input_observer",
    "default_symmetric_fixed_qparams_fake_quant",
    "default_symmetric_fixed_qparams_observer",
    "default_weight_fake_quant",
    "default_weight_observer",
    "fused_per_channel_wt_fake_quant_range_neg_127_to_127",
    "fused_wt_fake_quant_range_neg_127_to_127",
    "per_channel_weight_observer_range_neg_127_to_127",
    "weight_observer_range_neg_127_to_127",
]

# Weights are signed int8, symmetric, per tensor or per channel. The "range_neg_127_to_127"
# variants drop -128, so that negation cannot overflow.
_NEG_127_TO_127: dict[str, Any] = {"quant_min": -127, "quant_max": 127, "eps": 2**-12}


def _weight_observer(per_channel: bool, **kwargs: Any) -> PartialWrapper:
    """A symmetric int8 min/max weight observer; ``kwargs`` are bound after dtype and qscheme."""
    if per_channel:
        return PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, **kwargs
        )
    return MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, **kwargs)


def _weight_fake_quant(
    cls: type[FakeQuantize],
    per_channel: bool,
    quant_min: int = -128,
    quant_max: int = 127,
    **kwargs: Any,
) -> PartialWrapper:
    """``cls`` with a moving-average symmetric int8 observer; ``kwargs`` are bound last."""
    return cls.with_args(
        observer=(
            MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        ),
        quant_min=quant_min,
        quant_max=quant_max,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        **kwargs,
    )


def _activation_fake_quant(observer: type[MinMaxObserver | HistogramObserver]) -> PartialWrapper:
    """Per-tensor affine quint8 activation fake quantization with ``observer``."""
    return FakeQuantize.with_args(
        observer=observer,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=True,
    )


# -- observers -----------------------------------------------------------------------------

# Activations restricted to 0..127 (the x86 reduce-range convention).
default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_debug_observer = RecordingObserver
default_weight_observer = _weight_observer(per_channel=False)
weight_observer_range_neg_127_to_127 = _weight_observer(per_channel=False, **_NEG_127_TO_127)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = _weight_observer(per_channel=True)
per_channel_weight_observer_range_neg_127_to_127 = _weight_observer(
    per_channel=True, **_NEG_127_TO_127
)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True
)
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint4x2, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
# tanh-like outputs in [-1, 1) and sigmoid-like outputs in [0, 1).
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=torch.quint8, quant_min=0, quant_max=255
)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255
)
default_symmetric_fixed_qparams_observer = default_fixed_qparams_range_neg1to1_observer
default_affine_fixed_qparams_observer = default_fixed_qparams_range_0to1_observer
default_reuse_input_observer = ReuseInputObserver

# -- fake quantize -------------------------------------------------------------------------

default_fake_quant = _activation_fake_quant(MovingAverageMinMaxObserver)
default_weight_fake_quant = _weight_fake_quant(FakeQuantize, per_channel=False, reduce_range=False)
default_dynamic_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    is_dynamic=True,
    dtype=torch.quint8,
    averaging_constant=1,
)
default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_neg1to1_observer
)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_0to1_observer
)
default_symmetric_fixed_qparams_fake_quant = default_fixed_qparams_range_neg1to1_fake_quant
default_affine_fixed_qparams_fake_quant = default_fixed_qparams_range_0to1_fake_quant
default_per_channel_weight_fake_quant = _weight_fake_quant(
    FakeQuantize, per_channel=True, reduce_range=False, ch_axis=0
)
default_embedding_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=torch.per_channel_affine_float_qparams,
    dtype=torch.quint8,
    quant_min=0,
    quant_max=255,
    ch_axis=0,
    averaging_constant=1,
)
default_embedding_fake_quant_4bit = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=torch.per_channel_affine_float_qparams,
    ch_axis=0,
    dtype=torch.quint4x2,
    averaging_constant=1,
)
default_histogram_fake_quant = _activation_fake_quant(HistogramObserver)
default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.quint8,
)
default_fused_wt_fake_quant = _weight_fake_quant(FusedMovingAvgObsFakeQuantize, per_channel=False)
default_fused_per_channel_wt_fake_quant = _weight_fake_quant(
    FusedMovingAvgObsFakeQuantize, per_channel=True
)
fused_wt_fake_quant_range_neg_127_to_127 = _weight_fake_quant(
    FusedMovingAvgObsFakeQuantize, per_channel=False, **_NEG_127_TO_127
)
fused_per_channel_wt_fake_quant_range_neg_127_to_127 = _weight_fake_quant(
    FusedMovingAvgObsFakeQuantize, per_channel=True, **_NEG_127_TO_127
)
