r"""PercentileObserver: clip the range to the ``percentile``-th and ``100 - percentile``-th percentiles.

The observer records a histogram exactly as :class:`~observers.HistogramObserver`
does (same binning, re-binning and NaN/Inf handling; it is a subclass), and
``calculate_qparams`` reads the two percentiles off the histogram's cumulative
counts, interpolating linearly inside a bin (values are taken to be uniform in
their bin). The result is within about one bin width, ``(max - min) / bins``, of
``numpy.percentile`` on the raw data; the range then gives ``(scale,
zero_point)`` as :class:`~observers.MinMaxObserver` would.

Worked example: 1000 values ``0, 1, ..., 999`` and ``percentile=99`` keep the
range ``[~10, ~990]``; one extreme outlier no longer sets the scale.

>>> import torch
>>> from observers import PercentileObserver
>>> obs = PercentileObserver(percentile=99.0, bins=1000)
>>> _ = obs(torch.arange(1000.0))
>>> low, high = obs.clipping_range()
>>> round(low.item()), round(high.item())
(10, 989)
"""

from __future__ import annotations

from typing import Any

import torch

from observers.errors import QuantizationConfigError
from observers.histogram import HistogramObserver
from observers.qparams import DEFAULT_EPS

__all__ = ["PercentileObserver", "histogram_quantile"]


def histogram_quantile(
    histogram: torch.Tensor, low: torch.Tensor, high: torch.Tensor, q: float
) -> torch.Tensor:
    """The value below which a fraction ``q`` of the histogram's counts lie.

    ``histogram`` has equal-width bins spanning ``[low, high]``; counts are
    taken as uniform inside their bin, so the answer interpolates linearly.

    >>> import torch
    >>> histogram_quantile(torch.tensor([1.0, 1.0, 2.0]), torch.tensor(0.0), torch.tensor(3.0), 0.5)
    tensor(2.)
    """
    counts = histogram.to(torch.float64)
    cumulative = torch.cumsum(counts, dim=0)
    target = q * cumulative[-1]
    index = int(torch.searchsorted(cumulative, target.reshape(1)).clamp(0, counts.numel() - 1))
    before = cumulative[index - 1] if index > 0 else cumulative.new_zeros(())
    inside = counts[index]
    fraction = (target - before) / inside if bool(inside > 0) else inside.new_zeros(())
    width = (high.to(torch.float64) - low.to(torch.float64)) / counts.numel()
    return (low.to(torch.float64) + width * (index + fraction.clamp(0, 1))).to(low.dtype)


class PercentileObserver(HistogramObserver):
    """Per-tensor observer whose range runs from the ``100 - percentile``-th to the ``percentile``-th percentile.

    Args:
        percentile: upper percentile, in ``(50, 100]``; ``100`` gives the
            min/max range. The lower bound is the ``100 - percentile``-th
            percentile (after which the range is widened to contain 0, as
            for every uniform observer).
        bins: histogram bins; the percentiles are exact to about one bin width.
        others: as :class:`~observers.HistogramObserver`.

    Raises:
        QuantizationConfigError: on a percentile outside ``(50, 100]`` or any
            argument :class:`~observers.HistogramObserver` rejects.

    >>> import torch
    >>> obs = PercentileObserver(percentile=99.9, dtype=torch.qint8,
    ...                          qscheme=torch.per_tensor_symmetric)
    >>> _ = obs(torch.cat([torch.linspace(-1.0, 1.0, 10_000), torch.tensor([100.0])]))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> zero_point.item(), round(scale.item() * 127.5, 1)   # the outlier at 100 is clipped
    (0, 1.0)
    """

    def __init__(
        self,
        percentile: float = 99.99,
        bins: int = 2048,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = DEFAULT_EPS,
        is_dynamic: bool = False,
    ) -> None:
        if (
            isinstance(percentile, bool)
            or not isinstance(percentile, (int, float))
            or not 50 < percentile <= 100
        ):
            raise QuantizationConfigError(
                f"PercentileObserver: percentile={percentile!r} must be a number in (50, 100]; "
                "e.g. 99.99 keeps all but the outermost 0.01% of values on each side."
            )
        super().__init__(
            bins, dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps,
            is_dynamic,
        )
        self.percentile = float(percentile)

    def clipping_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)``: the two percentiles of everything observed so far."""
        self._check_observed(self.min_val, self.max_val)
        return self._search_range()

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(self.min_val == self.max_val):
            return self.min_val, self.max_val
        upper = self.percentile / 100
        low = histogram_quantile(self.histogram, self.min_val, self.max_val, 1 - upper)
        high = histogram_quantile(self.histogram, self.min_val, self.max_val, upper)
        return low, high

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, {super().extra_repr()}"
