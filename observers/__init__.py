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

from observers import defaults
from observers.affine import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedObserverBase,
    AffineQuantizedPlaceholderObserver,
)
from observers.affine_fake_quantize import (
    AffineFakeQuantize,
    default_affine_fake_quant,
    default_affine_per_axis_fake_quant,
    default_groupwise_fake_quant,
)
from observers.base import ObserverBase, UniformQuantizationObserverBase
from observers.defaults import *  # noqa: F403 (the ready-made constructors, listed in defaults)
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
from observers.granularity import (
    Granularity,
    MappingType,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    TorchAODType,
    ZeroPointDomain,
    get_block_size,
)
from observers.histogram import HistogramObserver
from observers.learnable import LearnableFakeQuantize, disable_range_learning, enable_range_learning
from observers.minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from observers.mse import MSEObserver
from observers.percentile import PercentileObserver
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
    "MSEObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "NoopObserver",
    "ObserverBase",
    "PartialWrapper",
    "PercentileObserver",
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
]
# the affine / granularity family (torchao's names)
__all__ += [
    "AffineFakeQuantize",
    "AffineQuantizedMinMaxObserver",
    "AffineQuantizedMovingAverageMinMaxObserver",
    "AffineQuantizedObserverBase",
    "AffineQuantizedPlaceholderObserver",
    "Granularity",
    "MappingType",
    "PerAxis",
    "PerBlock",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "PerToken",
    "TorchAODType",
    "ZeroPointDomain",
    "default_affine_fake_quant",
    "default_affine_per_axis_fake_quant",
    "default_groupwise_fake_quant",
    "get_block_size",
]
# The ready-made constructors are listed once, in observers.defaults.__all__.
__all__ += defaults.__all__
