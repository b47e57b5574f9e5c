"""The affine observers: per-block statistics of a granularity, turned into qparams.

The math is :mod:`observers.affine_qparams`'s; constructors, defaults and
results match torchao's ``torchao.quantization.pt2e`` affine observers.
``convert_pt2e`` calls each observer's ``convert``, which emits
``torch.ops.pt2e.quantize_affine`` / ``dequantize_affine`` (and
``choose_qparams_affine`` when dynamic).

>>> import torch
>>> from observers.granularity import PerGroup
>>> obs = AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(2),
...                                     quant_min=-8, quant_max=7)
>>> _ = obs(torch.tensor([[-1.0, 0.5, 3.0, 1.5]]))
>>> scale, zero_point = obs.calculate_qparams()
>>> [round(s, 4) for s in scale.flatten().tolist()], zero_point.flatten().tolist()
([0.1333, 0.4], [0.0, 0.0])
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node

from observers.affine_qparams import choose_qparams_affine_with_min_max
from observers.errors import ObserverStateError, QuantizationConfigError, UnsupportedOperationError
from observers.factory import with_args as _with_args
from observers.granularity import (
    Granularity,
    MappingType,
    ZeroPointDomain,
    affine_quant_range,
    get_block_size,
    reduction_params,
)

__all__ = [
    "AffineQuantizedObserverBase",
    "AffineQuantizedMinMaxObserver",
    "AffineQuantizedMovingAverageMinMaxObserver",
    "AffineQuantizedPlaceholderObserver",
]


class AffineQuantizedObserverBase(nn.Module, abc.ABC):
    """Base of the affine observers: per-block statistics, ``calculate_qparams``, and ``convert``.

    ``granularity`` sets the block size (recorded from the first input's shape
    as ``block_size``); the other arguments go to the qparams math (:mod:`observers.affine_qparams`). Extra
    keyword arguments are accepted and ignored, as torchao does; ``is_dynamic``
    among them is kept (convert then computes qparams at run time).

    ``convert(model, observer_node)`` replaces the observer's node with
    ``pt2e::quantize_affine`` / ``pt2e::dequantize_affine`` (and
    ``pt2e::choose_qparams_affine`` when dynamic): :func:`pt2e.convert_pt2e`
    calls it, as torchao's convert calls an observer's own ``convert``.

    >>> import torch
    >>> from observers.granularity import PerTensor
    >>> obs = AffineQuantizedMinMaxObserver(MappingType.ASYMMETRIC, torch.uint8, PerTensor())
    >>> obs.dtype, obs.block_size
    (torch.uint8, None)
    """

    with_args = classmethod(_with_args)
    block_size: tuple[int, ...] | None
    original_dtype: torch.dtype | None
    min_val: torch.Tensor  # per-block statistics, buffers from the first input on
    max_val: torch.Tensor

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float | None = None,
        scale_dtype: torch.dtype | None = None,
        zero_point_dtype: torch.dtype | None = None,
        preserve_zero: bool = True,
        zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(granularity, Granularity):
            raise QuantizationConfigError(
                f"{owner}: granularity={granularity!r} must be a Granularity (PerTensor(), "
                "PerAxis(axis), PerGroup(group_size), PerRow(), PerToken(), PerBlock(block_size))."
            )
        if not isinstance(mapping_type, MappingType):
            raise QuantizationConfigError(
                f"{owner}: mapping_type={mapping_type!r} must be a MappingType."
            )
        affine_quant_range(target_dtype, quant_min, quant_max)  # validates dtype and range
        self.mapping_type = mapping_type
        self.target_dtype = target_dtype
        self.granularity = granularity
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = eps
        self.scale_dtype = scale_dtype
        self.zero_point_dtype = zero_point_dtype
        self.preserve_zero = preserve_zero
        self.zero_point_domain = zero_point_domain
        self.is_dynamic = bool(getattr(self, "is_dynamic", kwargs.get("is_dynamic", False)))
        self.block_size = None
        self.original_dtype = None

    @property
    def dtype(self) -> torch.dtype:
        """``target_dtype`` (what the project's observer checks read)."""
        return self.target_dtype

    def _record(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record block size and dtype of ``x``; return its per-block min and max."""
        self.original_dtype = x.dtype
        self.block_size = get_block_size(tuple(x.shape), self.granularity)
        shape, dims = reduction_params(self.block_size, x.shape)
        blocks = x.detach().reshape(shape)
        return torch.amin(blocks, dim=dims), torch.amax(blocks, dim=dims)

    def _store(self, min_val: torch.Tensor, max_val: torch.Tensor, averaging: float) -> None:
        old_min: torch.Tensor | None = getattr(self, "min_val", None)
        if old_min is None:
            self.register_buffer("min_val", min_val)
            self.register_buffer("max_val", max_val)
            return
        if old_min.shape != min_val.shape:
            raise ObserverStateError(
                f"{type(self).__name__}: the statistics have shape {tuple(old_min.shape)} but "
                f"this input gives {tuple(min_val.shape)} (block_size={self.block_size}); "
                "every input an affine observer sees must have the same block layout."
            )
        old_max = self.max_val
        if averaging < 0:  # running min/max
            old_min.copy_(torch.min(old_min, min_val))
            old_max.copy_(torch.max(old_max, max_val))
        else:
            old_min.copy_(old_min + averaging * (min_val - old_min))
            old_max.copy_(old_max + averaging * (max_val - old_max))

    @abc.abstractmethod
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Record statistics of ``input`` and return it unchanged."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scale, zero_point)``, one entry per block."""
        if getattr(self, "min_val", None) is None:
            raise ObserverStateError(
                f"{type(self).__name__} has seen no data, so it has no quantization parameters. "
                "Run calibration data through the prepared model before convert_pt2e / "
                "calculate_qparams()."
            )
        return choose_qparams_affine_with_min_max(
            self.min_val, self.max_val, self.mapping_type, (), self.target_dtype,
            self.quant_min, self.quant_max, self.eps, self.scale_dtype, self.zero_point_dtype,
            self.preserve_zero, self.zero_point_domain,
        )

    def convert(self, model: GraphModule, observer_node: Node) -> None:
        """Replace ``observer_node`` in ``model`` with the affine quantize/dequantize ops."""
        # pt2e sits above observers: imported when called, never at import time
        from pt2e.convert import replace_affine_observer

        replace_affine_observer(model, observer_node, self)


class AffineQuantizedMinMaxObserver(AffineQuantizedObserverBase):
    """Running per-block min and max.

    >>> import torch
    >>> from observers.granularity import PerToken
    >>> obs = AffineQuantizedMinMaxObserver(MappingType.ASYMMETRIC, torch.uint8, PerToken())
    >>> _ = obs(torch.tensor([[0.0, 2.55], [-1.0, 1.0]]))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> [round(s, 4) for s in scale.tolist()], zero_point.tolist(), obs.block_size
    ([0.01, 0.0078], [0.0, 127.0], (1, 2))
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.numel() == 0:
            return input
        self._store(*self._record(input), averaging=-1.0)
        return input


class AffineQuantizedMovingAverageMinMaxObserver(AffineQuantizedObserverBase):
    """Per-block min and max, each a moving average: ``m += averaging_constant * (new - m)``.

    >>> import torch
    >>> from observers.granularity import PerTensor
    >>> obs = AffineQuantizedMovingAverageMinMaxObserver(MappingType.SYMMETRIC, torch.int8,
    ...                                                  PerTensor(), averaging_constant=0.5)
    >>> _ = obs(torch.tensor([-1.0, 1.0])); _ = obs(torch.tensor([-3.0, 3.0]))
    >>> obs.min_val.item(), obs.max_val.item()
    (-2.0, 2.0)
    """

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        averaging_constant: float = 0.01,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float | None = None,
        is_dynamic: bool = False,
        scale_dtype: torch.dtype | None = None,
        zero_point_dtype: torch.dtype | None = None,
        preserve_zero: bool = True,
        zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        if is_dynamic and averaging_constant != 1:
            raise UnsupportedOperationError(
                f"AffineQuantizedMovingAverageMinMaxObserver: is_dynamic=True needs "
                f"averaging_constant=1 (got {averaging_constant}); dynamic qparams come from "
                "the current input only."
            )
        self.is_dynamic = is_dynamic
        self.averaging_constant = averaging_constant
        super().__init__(
            mapping_type, target_dtype, granularity, quant_min, quant_max, eps, scale_dtype,
            zero_point_dtype, preserve_zero, zero_point_domain,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.numel() == 0:
            return input
        self._store(*self._record(input), averaging=float(self.averaging_constant))
        return input


class AffineQuantizedPlaceholderObserver(AffineQuantizedObserverBase):
    """Records only the block size and dtype: for dynamic quantization (qparams at run time).

    >>> import torch
    >>> from observers.granularity import PerToken
    >>> obs = AffineQuantizedPlaceholderObserver(MappingType.ASYMMETRIC, torch.int8, PerToken(),
    ...                                          is_dynamic=True)
    >>> _ = obs(torch.ones(2, 3, 8)); obs.block_size
    (1, 1, 8)
    """

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float | None = None,
        is_dynamic: bool = False,
        scale_dtype: torch.dtype | None = None,
        zero_point_dtype: torch.dtype | None = None,
        preserve_zero: bool = True,
        zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        self.is_dynamic = is_dynamic
        super().__init__(
            mapping_type, target_dtype, granularity, quant_min, quant_max, eps, scale_dtype,
            zero_point_dtype, preserve_zero, zero_point_domain,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.block_size = get_block_size(tuple(input.shape), self.granularity)
        self.original_dtype = input.dtype
        return input

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise UnsupportedOperationError(
            "AffineQuantizedPlaceholderObserver keeps no statistics, so it has no static "
            "quantization parameters: use it with is_dynamic=True (qparams computed at run "
            "time), or use AffineQuantizedMinMaxObserver for static quantization."
        )
