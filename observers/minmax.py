"""Min/max observers: running or moving-average range, per tensor or per channel.

Non-finite values (NaN, +Inf, -Inf) are ignored when taking the min/max: a
single NaN or overflow in a calibration batch does not poison the range. They are
counted in ``nonfinite_seen`` (``convert_pt2e`` warns with the count). An
observer that saw nothing finite raises
:class:`~observers.errors.ObserverStateError` from ``calculate_qparams``.

>>> import torch
>>> from observers import MinMaxObserver
>>> obs = MinMaxObserver()
>>> _ = obs(torch.tensor([0.0, 1.0, float("nan")]))
>>> _ = obs(torch.tensor([-1.0, float("inf")]))
>>> obs.min_val.item(), obs.max_val.item()
(-1.0, 1.0)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from observers.base import UniformQuantizationObserverBase
from observers.errors import ArgumentTypeError, ObserverStateError, QuantizationConfigError
from observers.qparams import DEFAULT_EPS
from observers.validation import PER_CHANNEL_QSCHEMES, PER_TENSOR_QSCHEMES

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "PerChannelMinMaxObserver",
    "finite_aminmax",
]


def finite_aminmax(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.aminmax`` that skips NaN and ±Inf; a slice with no finite value gives ``(inf, -inf)``.

    >>> import torch
    >>> finite_aminmax(torch.tensor([[1.0, float("nan")], [float("inf"), float("-inf")]]), dim=1)
    (tensor([1., inf]), tensor([1., -inf]))
    """
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    low = torch.where(finite, x, inf)
    high = torch.where(finite, x, -inf)
    if dim is None:
        return low.min(), high.max()
    return low.amin(dim), high.amax(dim)


def _moving_average(
    old: torch.Tensor, new: torch.Tensor, averaging_constant: float
) -> torch.Tensor:
    """Blend ``new`` into ``old``; entries never seen take ``new``, entries absent from ``new`` keep ``old``."""
    blended = old + averaging_constant * (new - old)
    kept = torch.where(torch.isfinite(new), blended, old)
    return torch.where(torch.isfinite(old), kept, new)


def _check_averaging_constant(owner: str, averaging_constant: float) -> None:
    if not 0 <= averaging_constant <= 1:
        raise QuantizationConfigError(
            f"{owner}: averaging_constant={averaging_constant} must be in [0, 1]."
        )


class _RangeObserver(UniformQuantizationObserverBase):
    """What the four min/max observers share: reduce each batch, merge it, store it.

    The variants differ only in how a batch is reduced (``_batch_range``: the
    whole tensor, or per channel), how it merges with the stored range
    (``_merge``: running min/max, or :class:`_MovingAverageRange`) and how the
    buffers are created and stored.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor

    def _register_statistics(self) -> None:
        # A scalar range that any finite value narrows.
        self.register_buffer("min_val", torch.tensor(float("inf"), **self.factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **self.factory_kwargs))

    def _batch_range(self, x_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return finite_aminmax(x_orig.detach().to(self.min_val.dtype))

    def _merge(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running range: widen the stored range to include ``[low, high]``."""
        if self.min_val.numel() == 0:  # per channel, before the first batch
            return low, high
        return torch.min(low, self.min_val), torch.max(high, self.max_val)

    def _store(self, low: torch.Tensor, high: torch.Tensor) -> None:
        self.min_val.copy_(low)
        self.max_val.copy_(high)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Update the recorded range with ``x_orig``'s; return ``x_orig``."""
        if x_orig.numel() == 0:
            return x_orig
        self.count_nonfinite(x_orig.detach())
        self._store(*self._merge(*self._batch_range(x_orig)))
        return x_orig

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(scale, zero_point)``, each of shape ``[1]`` (per tensor) or ``[channels]``."""
        return self._calculate_qparams(self.min_val, self.max_val)


class _MovingAverageRange(_RangeObserver):
    """Mixin: merge each batch into an exponential moving average instead of a running range."""

    averaging_constant: float

    def _merge(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val.numel() == 0:  # per channel, before the first batch
            return low, high
        return (
            _moving_average(self.min_val, low, self.averaging_constant),
            _moving_average(self.max_val, high, self.averaging_constant),
        )


class MinMaxObserver(_RangeObserver):
    """Per-tensor observer on the running minimum and maximum of everything it sees.

    Args: as :class:`~observers.base.UniformQuantizationObserverBase`; qscheme
    must be per-tensor (use :class:`PerChannelMinMaxObserver` otherwise).

    >>> import torch
    >>> obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    >>> _ = obs(torch.tensor([-1.0, 3.0]))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> round(scale.item(), 6), zero_point.item(), zero_point.dtype
    (0.015686, 64, torch.int32)
    """

    _supported_qschemes: ClassVar[tuple[torch.qscheme, ...]] = PER_TENSOR_QSCHEMES
    _qscheme_hint: ClassVar[str] = "Use PerChannelMinMaxObserver for per-channel schemes."

    # __init__ is UniformQuantizationObserverBase's (same arguments as torchao's).

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        """Forget the observed range."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self.nonfinite_seen = 0


class MovingAverageMinMaxObserver(_MovingAverageRange, MinMaxObserver):
    """Per-tensor observer on an exponential moving average of each batch's min and max.

    ``x_min <- x_min + c * (min(X) - x_min)`` (the first batch initializes it),
    likewise for the max, with ``c = averaging_constant``. With
    ``averaging_constant=1`` the observer only remembers the last batch, which is
    what dynamic quantization (``is_dynamic=True``) requires.

    >>> import torch
    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs(torch.tensor([0.0, 2.0]))
    >>> _ = obs(torch.tensor([0.0, 4.0]))
    >>> obs.max_val.item()
    3.0
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        factory_kwargs = _factory_kwargs(type(self).__name__, kwargs)
        if is_dynamic and averaging_constant != 1:
            raise QuantizationConfigError(
                f"{type(self).__name__}: is_dynamic=True needs averaging_constant=1 "
                f"(got averaging_constant={averaging_constant}): dynamic quantization "
                "uses only the current batch's range."
            )
        _check_averaging_constant(type(self).__name__, averaging_constant)
        super().__init__(
            dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic
        )
        self.averaging_constant = averaging_constant


class PerChannelMinMaxObserver(_RangeObserver):
    """Observer on the running min and max of each slice along ``ch_axis``.

    ``min_val``/``max_val`` start empty and take the channel count from the
    first batch; qscheme must be per-channel. Loading a state dict into a fresh
    instance works (the buffers are resized).

    >>> import torch
    >>> obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
    ...                                qscheme=torch.per_channel_symmetric)
    >>> _ = obs(torch.tensor([[-1.0, 0.5], [0.25, 2.0]]))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> [round(s, 6) for s in scale.tolist()], zero_point.tolist()
    ([0.007843, 0.015686], [0, 0])
    """

    _supported_qschemes: ClassVar[tuple[torch.qscheme, ...]] = PER_CHANNEL_QSCHEMES
    _qscheme_hint: ClassVar[str] = "Use MinMaxObserver for per-tensor schemes."
    _dynamic_unsupported_hint: ClassVar[str] = (
        "dynamic quantization is per-tensor (use PlaceholderObserver(is_dynamic=True))."
    )

    def __init__(
        self,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = DEFAULT_EPS,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(
            dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic
        )
        self.ch_axis = ch_axis

    def _register_statistics(self) -> None:
        # Empty until the first batch tells the channel count.
        self.register_buffer("min_val", torch.tensor([], **self.factory_kwargs))
        self.register_buffer("max_val", torch.tensor([], **self.factory_kwargs))

    def _batch_range(self, x_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel finite min/max of ``x_orig``, checking the channel axis and count."""
        x = x_orig.detach()
        name = type(self).__name__
        if not -x.dim() <= self.ch_axis < x.dim() or x.dim() == 0:
            raise ObserverStateError(
                f"{name}: ch_axis={self.ch_axis} is out of range for an input of shape "
                f"{tuple(x.shape)}; set ch_axis to the channel dimension."
            )
        channels = x.movedim(self.ch_axis, 0).reshape(x.shape[self.ch_axis], -1)
        low, high = finite_aminmax(channels.to(self.min_val.dtype), dim=1)
        if self.min_val.numel() not in (0, low.numel()):
            raise ObserverStateError(
                f"{name}: got {low.numel()} channels along ch_axis={self.ch_axis} "
                f"(input shape {tuple(x.shape)}) but earlier inputs had {self.min_val.numel()}."
            )
        return low, high

    def _store(self, low: torch.Tensor, high: torch.Tensor) -> None:
        if self.min_val.shape != low.shape:  # the first batch fixes the channel count
            self.min_val = torch.empty_like(low)
            self.max_val = torch.empty_like(high)
        super()._store(low, high)

    def extra_repr(self) -> str:
        return f"ch_axis={self.ch_axis}, min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        """Forget the observed ranges (and the channel count)."""
        self.min_val = torch.tensor([], dtype=self.min_val.dtype, device=self.min_val.device)
        self.max_val = torch.tensor([], dtype=self.max_val.dtype, device=self.max_val.device)
        self.nonfinite_seen = 0


class MovingAveragePerChannelMinMaxObserver(_MovingAverageRange, PerChannelMinMaxObserver):
    """Per-channel observer on a moving average of each batch's per-channel min and max.

    >>> import torch
    >>> obs = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.5, ch_axis=1)
    >>> _ = obs(torch.tensor([[0.0, 2.0]]))
    >>> _ = obs(torch.tensor([[4.0, 2.0]]))
    >>> obs.max_val.tolist()
    [2.0, 2.0]
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        factory_kwargs = _factory_kwargs(type(self).__name__, kwargs)
        _check_averaging_constant(type(self).__name__, averaging_constant)
        super().__init__(
            ch_axis,
            dtype,
            qscheme,
            reduce_range,
            quant_min,
            quant_max,
            factory_kwargs,
            eps,
            is_dynamic,
        )
        self.averaging_constant = averaging_constant


def _factory_kwargs(owner: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """torchao's moving-average observers take ``factory_kwargs`` through ``**kwargs`` only."""
    factory_kwargs = kwargs.pop("factory_kwargs", None)
    if kwargs:
        raise ArgumentTypeError(
            f"{owner}() got unexpected keyword argument(s) {sorted(kwargs)}; it takes "
            "averaging_constant, dtype, qscheme, reduce_range, quant_min, quant_max, eps, "
            "is_dynamic (and ch_axis for per-channel) plus factory_kwargs"
        )
    return factory_kwargs  # type: ignore[no-any-return]
