r"""Fake quantization for quantization-aware training (QAT).

A fake-quantize module observes its input like an observer, then returns
``(clamp(round(x / scale + zero_point), quant_min, quant_max) - zero_point) * scale``
with a straight-through gradient (``torch.fake_quantize_per_tensor_affine`` /
``per_channel_affine``), so training sees the rounding error.

**Invariant**: the ``scale``/``zero_point`` a module uses in ``forward`` are
exactly what its ``calculate_qparams()`` returns, which is what
``convert_pt2e`` bakes into the converted model. (torchao's
``FusedMovingAvgObsFakeQuantize`` breaks this for symmetric schemes: its fused
kernel computes the scale differently from the observer convert reads.)

>>> import torch
>>> from observers import FakeQuantize, MovingAverageMinMaxObserver
>>> fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
>>> x = torch.tensor([-1.0, 0.0, 0.3, 3.0], requires_grad=True)
>>> y = fq(x)
>>> y.sum().backward()
>>> x.grad.tolist()  # straight-through: every value is inside the range
[1.0, 1.0, 1.0, 1.0]
>>> torch.equal(fq.scale, fq.calculate_qparams()[0])
True
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from observers.base import ShapeAdoptingModule
from observers.errors import QuantizationConfigError
from observers.factory import PartialWrapper
from observers.factory import with_args as _with_args
from observers.minmax import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from observers.simple import FixedQParamsObserver
from observers.validation import is_float_qparams, is_per_channel, is_symmetric

__all__ = [
    "FakeQuantize",
    "FakeQuantizeBase",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
]


class FakeQuantizeBase(ShapeAdoptingModule, metaclass=abc.ABCMeta):
    """Base of every fake-quantize module: the on/off switches for observing and fake quantizing.

    ``fake_quant_enabled`` and ``observer_enabled`` are one-element uint8
    buffers (so they travel with the state dict).

    >>> import torch
    >>> from observers import FakeQuantize
    >>> fq = FakeQuantize()
    >>> fq.disable_fake_quant()
    >>> fq(torch.tensor([0.1234])).equal(torch.tensor([0.1234]))  # identity while fake quant is off
    True
    """

    fake_quant_enabled: torch.Tensor
    observer_enabled: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe (if enabled) and fake quantize (if enabled) ``x``."""

    @abc.abstractmethod
    def calculate_qparams(self, **kwargs: Any) -> Any:
        """The ``(scale, zero_point)`` convert will use."""

    def enable_fake_quant(self, enabled: bool = True) -> None:
        """Turn fake quantization on (or off with ``enabled=False``)."""
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        """Turn fake quantization off: ``forward`` returns its input (still observing if enabled)."""
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        """Turn statistics collection on (or off with ``enabled=False``)."""
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        """Freeze the qparams: ``forward`` keeps using the last ones computed."""
        self.enable_observer(False)

    @classmethod
    def with_args(cls, **kwargs: Any) -> PartialWrapper:
        """A constructor with bound keyword arguments (see :mod:`observers.factory`)."""
        return _with_args(cls, **kwargs)


class FakeQuantize(FakeQuantizeBase):
    """Observer plus fake quantization, the standard QAT module.

    Args:
        observer: observer class or constructor (default
            :class:`~observers.MovingAverageMinMaxObserver`).
        quant_min, quant_max: integer range, passed to the observer (both or neither).
        is_dynamic: passed to the observer.
        **observer_kwargs: other observer arguments (``dtype``, ``qscheme``, ``ch_axis``, ...).

    Attributes:
        activation_post_process: the observer.
        scale, zero_point: buffers with the qparams used by ``forward``;
            refreshed from the observer on every forward while observing.
        dtype, qscheme, ch_axis, quant_min, quant_max, is_dynamic: read from the observer
            (``ch_axis`` is -1 for per-tensor observers).

    >>> import torch
    >>> from observers import MovingAveragePerChannelMinMaxObserver
    >>> fq = FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128,
    ...                   quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    >>> _ = fq(torch.randn(4, 3))
    >>> fq.scale.shape, fq.ch_axis, fq.is_per_channel
    (torch.Size([4]), 0, True)
    """

    # Per-channel qparams take their shape from the data (and from a loaded state dict).
    _data_shaped_buffers: ClassVar[tuple[str, ...]] = ("scale", "zero_point")

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int | None = None,
        quant_max: int | None = None,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min is not None or quant_max is not None:
            observer_kwargs.update({"quant_min": quant_min, "quant_max": quant_max})
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        obs = self.activation_post_process
        self.quant_min = obs.quant_min
        self.quant_max = obs.quant_max
        self.is_dynamic = obs.is_dynamic
        self.dtype = obs.dtype
        self.qscheme = obs.qscheme
        self.ch_axis = getattr(obs, "ch_axis", -1)
        self.is_per_channel = is_per_channel(self.qscheme)
        zero_point_dtype = torch.float if is_float_qparams(self.qscheme) else torch.int
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=zero_point_dtype))

    def calculate_qparams(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The observer's ``(scale, zero_point)``; equal to the buffers ``forward`` uses."""
        return self.activation_post_process.calculate_qparams()

    def _refresh_qparams(self) -> None:
        scale, zero_point = self.calculate_qparams()
        if self.scale.shape != scale.shape:
            self.scale = self.scale.new_empty(scale.shape)
            self.zero_point = self.zero_point.new_empty(zero_point.shape)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            self._refresh_qparams()
        if self.fake_quant_enabled[0] == 1:
            x = self._fake_quantize(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
            f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, scale={self.scale}, "
            f"zero_point={self.zero_point}"
        )


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake quantization with fixed qparams taken from a :class:`~observers.FixedQParamsObserver`.

    >>> import torch
    >>> from observers import FixedQParamsObserver
    >>> fq = FixedQParamsFakeQuantize(FixedQParamsObserver.with_args(scale=1.0 / 256, zero_point=0))
    >>> fq(torch.tensor([0.5, 2.0])).tolist()  # 2.0 saturates at 255/256
    [0.5, 0.99609375]
    """

    def __init__(self, observer: Any) -> None:
        super().__init__(observer=observer)
        obs = self.activation_post_process
        if type(obs) is not FixedQParamsObserver:
            raise QuantizationConfigError(
                f"FixedQParamsFakeQuantize: observer must build a FixedQParamsObserver, got "
                f"{type(obs).__name__}; pass FixedQParamsObserver.with_args(scale=..., zero_point=...)."
            )
        self._observer_ctr = observer
        # Share the observer's buffers: the qparams exist in one place only.
        self.scale = obs.scale
        self.zero_point = obs.zero_point

    def calculate_qparams(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed ``(scale, zero_point)``."""
        return self.scale, self.zero_point

    def _refresh_qparams(self) -> None:
        pass  # fixed


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """Moving-average observer plus fake quantization (torchao's fused module, same interface).

    Only moving-average observers are accepted, and the enable flags are int64
    buffers, as in torchao. Unlike torchao this does not call
    ``torch.fused_moving_avg_obs_fake_quant``: that kernel computes symmetric
    scales with a different formula than the observer that convert reads
    (pytorch/ao#4824), so the trained model and the converted model would
    disagree. The unfused path keeps ``forward`` and ``calculate_qparams`` equal.

    >>> import torch
    >>> fq = FusedMovingAvgObsFakeQuantize(quant_min=-8, quant_max=7, dtype=torch.qint8,
    ...                                    qscheme=torch.per_tensor_symmetric)
    >>> _ = fq(torch.tensor([-1.149422, 2.533506]))
    >>> round(fq.scale.item(), 6) == round(fq.calculate_qparams()[0].item(), 6) == 0.337801
    True
    """

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        obs = self.activation_post_process
        if not isinstance(
            obs, (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)
        ):
            raise QuantizationConfigError(
                f"FusedMovingAvgObsFakeQuantize: observer={type(obs).__name__} is not supported; "
                "allowed: MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver."
            )
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.long))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.long))
        self.is_symmetric_quant = is_symmetric(self.qscheme)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduce_range={self.activation_post_process.reduce_range}"


def module_switch(
    kind: type[nn.Module],
) -> Callable[[Callable[[nn.Module], None]], Callable[[nn.Module], None]]:
    """Decorator for the ``model.apply`` helpers, which differ only in the method they call.

    ``@module_switch(K) def name(mod): "doc"`` makes ``name(mod)`` call
    ``mod.name()`` when ``mod`` is a ``K`` and do nothing otherwise; the
    decorated function supplies only the name and the docstring. The method is
    looked up on each module, so overrides (e.g. LearnableFakeQuantize's
    ``enable_observer``) apply.
    """

    def decorate(stub: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
        method = stub.__name__

        @functools.wraps(stub)
        def switch(mod: nn.Module) -> None:
            if isinstance(mod, kind):
                getattr(mod, method)()

        return switch

    return decorate


@module_switch(FakeQuantizeBase)
def enable_fake_quant(mod: nn.Module) -> None:
    """Turn fake quantization on for ``mod`` if it is a fake-quantize module; use with ``model.apply``.

    >>> import torch
    >>> from observers import FakeQuantize
    >>> model = torch.nn.Sequential(FakeQuantize())
    >>> _ = model.apply(disable_fake_quant)
    >>> int(model[0].fake_quant_enabled)
    0
    >>> _ = model.apply(enable_fake_quant)
    >>> int(model[0].fake_quant_enabled)
    1
    """


@module_switch(FakeQuantizeBase)
def disable_fake_quant(mod: nn.Module) -> None:
    """Turn fake quantization off for ``mod`` if applicable; use with ``model.apply``."""


@module_switch(FakeQuantizeBase)
def enable_observer(mod: nn.Module) -> None:
    """Turn observation on for ``mod`` if applicable; use with ``model.apply``.

    >>> import torch
    >>> from observers import FakeQuantize
    >>> model = torch.nn.Sequential(FakeQuantize())
    >>> _ = model.apply(disable_observer)
    >>> int(model[0].observer_enabled)
    0
    """


@module_switch(FakeQuantizeBase)
def disable_observer(mod: nn.Module) -> None:
    """Turn observation off for ``mod`` if applicable; use with ``model.apply``."""
