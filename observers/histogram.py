r"""HistogramObserver: choose the clipping range that minimizes the L2 quantization error.

The observer keeps a ``bins``-bin histogram of everything it saw (re-binned
when the range grows). ``calculate_qparams`` then searches for the sub-range
``[start_bin, end_bin]`` whose uniform quantization into ``2**bits`` levels has
the smallest expected squared error, clipping outliers when that pays off, and
computes ``(scale, zero_point)`` from it as :class:`~observers.MinMaxObserver`
would. The search is the greedy one of caffe2's norm minimization (same as
torchao's): quantile bounds ``alpha``/``beta`` move inward in steps of 1e-5;
each step trims whichever side frees more bins; it stops when the error grows.

Error model, for one source bin of density ``d`` mapped onto a destination bin
of width ``w`` centred at ``c``: values are uniform in the bin, so the error
of ``[a, b]`` is ``d * ((b - c)**3 - (a - c)**3) / 3``; whole destination bins
contribute ``d * w**3 / 12``.

Because the criterion is L2, a lone far outlier is usually kept (clipping it
costs more than the rounding error it saves); the search pays off when a
heavy tail holds many values. Non-finite values are ignored.

>>> import torch
>>> from observers import HistogramObserver
>>> obs = HistogramObserver(bins=256)
>>> _ = obs(torch.linspace(-1.0, 3.0, 1001))
>>> scale, zero_point = obs.calculate_qparams()
>>> round(scale.item() * 255, 2), zero_point.item()
(3.98, 64)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from observers.base import UniformQuantizationObserverBase
from observers.errors import ObserverStateError, QuantizationConfigError
from observers.qparams import DEFAULT_EPS
from observers.validation import PER_TENSOR_QSCHEMES

__all__ = ["HistogramObserver"]

_SEARCH_STEP = 1e-5


def _dst_bits(dtype: torch.dtype) -> int:
    """Bits of the quantized dtype; the search divides the range into ``2**bits`` levels."""
    try:
        return torch.iinfo(dtype).bits
    except TypeError as err:
        raise QuantizationConfigError(
            f"HistogramObserver: dtype={dtype} is not an integer type; the histogram search "
            "needs one (e.g. torch.quint8, torch.qint8, torch.int8, torch.uint8)."
        ) from err


class HistogramObserver(UniformQuantizationObserverBase):
    """Per-tensor observer that picks the range minimizing the L2 quantization error.

    Args:
        bins: number of histogram bins.
        others: as :class:`~observers.base.UniformQuantizationObserverBase`;
            qscheme must be per-tensor and ``is_dynamic`` False.

    >>> import torch
    >>> obs = HistogramObserver(bins=64, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    >>> _ = obs(torch.linspace(-1.0, 1.0, 101))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> zero_point.item(), 0.005 < scale.item() < 0.01
    (0, True)
    """

    _supported_qschemes: ClassVar[tuple[torch.qscheme, ...]] = PER_TENSOR_QSCHEMES
    _qscheme_hint: ClassVar[str] = "Use PerChannelMinMaxObserver for per-channel schemes."
    _data_shaped_buffers: ClassVar[tuple[str, ...]] = ("min_val", "max_val", "histogram")
    _dynamic_unsupported_hint: ClassVar[str] = (
        "use PlaceholderObserver(is_dynamic=True) for dynamic quantization."
    )

    histogram: torch.Tensor
    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(
        self,
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
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise QuantizationConfigError(
                f"HistogramObserver: bins={bins!r} must be a positive int."
            )
        super().__init__(
            dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic
        )
        self.bins = bins
        self.dst_nbins = 2 ** _dst_bits(dtype)
        self.upsample_rate = 16  # sub-bins per bin when re-binning, limits re-binning error
        self.register_buffer("histogram", torch.zeros(bins, **self.factory_kwargs))
        self.register_buffer("min_val", torch.tensor(float("inf"), **self.factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **self.factory_kwargs))

    # -- recording -------------------------------------------------------------------------

    def _histc(self, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, self.bins, min=float(low), max=float(high))

    def _rebin(
        self,
        old_min: torch.Tensor,
        old_max: torch.Tensor,
        new_min: torch.Tensor,
        new_max: torch.Tensor,
    ) -> torch.Tensor:
        """The current histogram expressed on the wider range ``[new_min, new_max]``.

        Each bin is split into ``upsample_rate`` equal sub-bins whose centres are
        assigned to the new bins.
        """
        hist = self.histogram
        if bool(old_min == old_max):
            # Everything seen so far is one value: put its whole count in that value's new bin.
            return self._histc(old_min.reshape(1), new_min, new_max) * hist.sum()
        rate = self.upsample_rate
        fine = hist.repeat_interleave(rate) / rate
        fine_width = (old_max - old_min) / (self.bins * rate)
        centres = torch.linspace(old_min, old_max, self.bins * rate + 1, device=hist.device)[:-1]
        centres = centres + 0.5 * fine_width
        edges = torch.linspace(new_min, new_max, self.bins + 1, device=hist.device)
        index = (torch.bucketize(centres, edges, right=True) - 1).clamp(0, self.bins - 1)
        return torch.bincount(index, weights=fine, minlength=self.bins)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Add ``x_orig``'s finite values to the histogram; return ``x_orig``."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype).reshape(-1)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self.nonfinite_seen = getattr(self, "nonfinite_seen", 0) + int(
                x.numel() - int(finite.sum()))
            x = x[finite]
            if x.numel() == 0:
                return x_orig
        low, high = torch.aminmax(x)
        if bool(torch.isinf(self.min_val)):
            self.histogram.copy_(self._histc(x, low, high))
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            return x_orig
        new_min = torch.min(low, self.min_val)
        new_max = torch.max(high, self.max_val)
        update = self._histc(x, new_min, new_max).to(self.histogram.device)
        if bool(new_min == self.min_val) and bool(new_max == self.max_val):
            self.histogram.add_(update)
        else:
            combined = update + self._rebin(self.min_val, self.max_val, new_min, new_max)
            self.histogram.copy_(combined)
            self.min_val.copy_(new_min)
            self.max_val.copy_(new_max)
        return x_orig

    # -- range search ----------------------------------------------------------------------

    def _quantization_error(self, start_bin: int, end_bin: int) -> float:
        """Expected squared error of quantizing the histogram with range bins ``[start_bin, end_bin]``."""
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_width = bin_width * (end_bin - start_bin + 1) / self.dst_nbins
        if dst_width == 0.0:
            return 0.0
        device = self.histogram.device
        last = self.dst_nbins - 1
        src_begin = (torch.arange(self.bins, device=device) - start_bin) * bin_width
        src_end = src_begin + bin_width
        dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, last)
        dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, last)
        density = self.histogram / bin_width
        half = torch.tensor(dst_width / 2)

        def integral(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return density * ((b * b * b - a * a * a) / 3)

        # First (partial) destination bin, full bins in between, last (partial) bin.
        head = integral(src_begin - (dst_of_begin + 0.5) * dst_width, half.expand(self.bins))
        middle = (dst_of_end - dst_of_begin - 1) * integral(-half, half)
        tail = integral(-half, src_end - (dst_of_end * dst_width + dst_width / 2))
        return float((head + middle + tail).sum())

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy search for the clipping range; returns ``(new_min, new_max)``."""
        if bool(self.min_val == self.max_val):
            return self.min_val, self.max_val  # one value seen: every candidate has zero error
        csum = torch.cumsum(self.histogram, dim=0).cpu().numpy().astype(np.float32)
        total = float(self.histogram.sum())
        alpha, beta = 0.0, 1.0
        start, end = 0, self.bins - 1
        best = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + _SEARCH_STEP, beta - _SEARCH_STEP
            # Bins just inside the next quantiles (float32 compares, like a torch tensor compare).
            left = int(np.searchsorted(csum, np.float32(next_alpha * total), side="left"))
            right = int(np.searchsorted(csum, np.float32(next_beta * total), side="right")) - 1
            left = min(max(left, start), end)
            right = max(min(right, end), start)
            if left - start > end - right:
                candidate, alpha = (left, end), next_alpha
            else:
                candidate, beta = (start, right), next_beta
            if candidate == (start, end):
                continue
            error = self._quantization_error(*candidate)
            if error > best:
                break
            best = error
            start, end = candidate
        bin_width = (self.max_val - self.min_val) / self.bins
        return self.min_val + bin_width * start, self.min_val + bin_width * (end + 1)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(scale, zero_point)`` of the error-minimizing range, each of shape ``[1]``."""
        self._check_observed(self.min_val, self.max_val)
        if self.histogram.numel() != self.bins:
            raise ObserverStateError(
                f"HistogramObserver: the histogram has {self.histogram.numel()} bins but "
                f"bins={self.bins}; load a state dict saved with the same bins."
            )
        new_min, new_max = self._search_range()
        return self._calculate_qparams(new_min, new_max)

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        self.histogram.zero_()
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self.nonfinite_seen = 0

    def extra_repr(self) -> str:
        return f"bins={self.bins}, min_val={self.min_val}, max_val={self.max_val}"
