"""Observers, fake quantization and the quantization-parameter math of the PT2E flow.

The public names match ``torchao.quantization.pt2e``'s observers and fake
quantizers (constructors, argument names, defaults, ``calculate_qparams``
results); see ``docs/observers.md`` for the formulas and the deliberate
differences (clear errors instead of asserts, consistent fake-quant qparams).

>>> import torch
>>> import observers
>>> obs = observers.default_weight_observer()
>>> _ = obs(torch.tensor([-0.5, 1.0]))
>>> scale, zero_point = obs.calculate_qparams()
>>> round(scale.item(), 6), zero_point.item()
(0.007843, 0)
"""

from __future__ import annotations

from observers.base import ObserverBase, UniformQuantizationObserverBase
from observers.defaults import (
    default_affine_fixed_qparams_fake_quant,
    default_affine_fixed_qparams_observer,
    default_debug_observer,
    default_dynamic_fake_quant,
    default_dynamic_quant_observer,
    default_embedding_fake_quant,
    default_embedding_fake_quant_4bit,
    default_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_fake_quant,
    default_fixed_qparams_range_neg1to1_observer,
    default_float_qparams_observer,
    default_float_qparams_observer_4bit,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_histogram_fake_quant,
    default_histogram_observer,
    default_observer,
    default_per_channel_weight_fake_quant,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_reuse_input_observer,
    default_symmetric_fixed_qparams_fake_quant,
    default_symmetric_fixed_qparams_observer,
    default_weight_fake_quant,
    default_weight_observer,
    fused_per_channel_wt_fake_quant_range_neg_127_to_127,
    fused_wt_fake_quant_range_neg_127_to_127,
    per_channel_weight_observer_range_neg_127_to_127,
    weight_observer_range_neg_127_to_127,
)
from observers.derived import (
    DerivedObserverOrFakeQuantize,
    ObserverOrFakeQuantize,
    ObserverOrFakeQuantizeConstructor,
)
from observers.errors import ObserverStateError, Pt2eError, QuantizationConfigError
from observers.factory import PartialWrapper
from observers.fake_quantize import (
    FakeQuantize,
    FakeQuantizeBase,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from observers.histogram import HistogramObserver
from observers.learnable import LearnableFakeQuantize, disable_range_learning, enable_range_learning
from observers.minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from observers.qparams import default_quant_range, qparams_from_min_max, resolve_quant_range
from observers.simple import (
    FixedQParamsObserver,
    NoopObserver,
    PlaceholderObserver,
    RecordingObserver,
    ReuseInputObserver,
)
from observers.validation import is_float_qparams, is_per_channel, is_per_tensor, is_symmetric

__all__ = [
    # errors
    "ObserverStateError",
    "Pt2eError",
    "QuantizationConfigError",
    # qparams math and scheme predicates
    "default_quant_range",
    "is_float_qparams",
    "is_per_channel",
    "is_per_tensor",
    "is_symmetric",
    "qparams_from_min_max",
    "resolve_quant_range",
    # observers
    "DerivedObserverOrFakeQuantize",
    "FixedQParamsObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "NoopObserver",
    "ObserverBase",
    "PartialWrapper",
    "PerChannelMinMaxObserver",
    "PlaceholderObserver",
    "RecordingObserver",
    "ReuseInputObserver",
    "UniformQuantizationObserverBase",
    # fake quantization
    "FakeQuantize",
    "FakeQuantizeBase",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "LearnableFakeQuantize",
    "disable_fake_quant",
    "disable_observer",
    "disable_range_learning",
    "enable_fake_quant",
    "enable_observer",
    "enable_range_learning",
    # type aliases
    "ObserverOrFakeQuantize",
    "ObserverOrFakeQuantizeConstructor",
    # ready-made constructors
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
