"""Observers that record nothing (or everything): placeholder, no-op, fixed qparams, reuse, recording.

>>> import torch
>>> from observers import FixedQParamsObserver
>>> obs = FixedQParamsObserver(scale=1.0 / 256, zero_point=0)
>>> obs.calculate_qparams()
(tensor([0.0039]), tensor([0], dtype=torch.int32))
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from observers.base import ObserverBase
from observers.errors import ObserverStateError, QuantizationConfigError
from observers.qparams import DEFAULT_EPS, resolve_quant_range
from observers.validation import PER_TENSOR_QSCHEMES, check_fixed_qparams, check_qscheme

__all__ = [
    "FixedQParamsObserver",
    "NoopObserver",
    "PlaceholderObserver",
    "RecordingObserver",
    "ReuseInputObserver",
]


def _no_qparams(observer: ObserverBase, reason: str) -> ObserverStateError:
    return ObserverStateError(
        f"calculate_qparams() should not be called on {type(observer).__name__}: {reason}"
    )


class PlaceholderObserver(ObserverBase):
    """Carries quantization settings without observing: for dynamic quantization and float16.

    With ``is_dynamic=True`` convert inserts ``choose_qparams`` so that the range
    is computed at run time from ``dtype``/``quant_min``/``quant_max``/``eps``.

    Args:
        dtype: target dtype (``torch.float16``, ``torch.quint8``, ``torch.int8``, ...).
        custom_op_name: kept for torchao compatibility.
        compute_dtype: deprecated; a truthy value means ``is_dynamic=True``.
        quant_min, quant_max, qscheme, eps: forwarded to convert (qscheme defaults
            to ``torch.per_tensor_affine``, eps to float32 epsilon).
        is_dynamic: see above.

    >>> import torch
    >>> obs = PlaceholderObserver(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
    >>> obs.is_dynamic, obs.qscheme, obs(torch.ones(2)).tolist()
    (True, torch.per_tensor_affine, [1.0, 1.0])
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        custom_op_name: str = "",
        compute_dtype: torch.dtype | None = None,
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        eps: float | None = None,
        is_dynamic: bool = False,
    ) -> None:
        if compute_dtype:
            warnings.warn(
                "PlaceholderObserver: compute_dtype is deprecated; pass is_dynamic=True instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            is_dynamic = True
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = DEFAULT_EPS if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self, **kwargs: Any) -> Any:
        raise _no_qparams(
            self, "it observes nothing (dynamic quantization computes qparams at run time)."
        )


class NoopObserver(ObserverBase):
    """Does nothing; marks a float16 (or otherwise unobserved) edge.

    >>> import torch
    >>> NoopObserver().dtype
    torch.float16
    """

    def __init__(self, dtype: torch.dtype = torch.float16, custom_op_name: str = "") -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.custom_op = custom_op_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self, **kwargs: Any) -> Any:
        raise _no_qparams(self, "it observes nothing.")


class ReuseInputObserver(ObserverBase):
    """Marks an op (e.g. ``reshape``) whose output reuses its input's observer.

    >>> import torch
    >>> ReuseInputObserver()(torch.zeros(1)).tolist()
    [0.0]
    """

    def __init__(self) -> None:
        super().__init__(torch.quint8, is_dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self, **kwargs: Any) -> Any:
        raise _no_qparams(self, "prepare replaces it with the input's observer.")


class RecordingObserver(ObserverBase):
    """Debug observer that keeps a copy of every tensor it sees in ``tensor_val``.

    >>> import torch
    >>> obs = RecordingObserver()
    >>> _ = obs(torch.tensor([1.0])); _ = obs(torch.tensor([2.0]))
    >>> [t.item() for t in obs.get_tensor_value()]
    [1.0, 2.0]
    """

    def __init__(self, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.tensor_val: list[torch.Tensor | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tensor_val.append(x.clone())
        return x

    def get_tensor_value(self) -> list[torch.Tensor | None]:
        """The recorded tensors, oldest first."""
        return self.tensor_val

    def calculate_qparams(self, **kwargs: Any) -> Any:
        raise _no_qparams(self, "it only records tensors for debugging.")


class FixedQParamsObserver(ObserverBase):
    """Reports fixed ``(scale, zero_point)``, e.g. for sigmoid (``[0, 1)``) or tanh (``[-1, 1)``).

    Args:
        scale, zero_point: the fixed qparams.
        dtype, qscheme, quant_min, quant_max: as for the other observers;
            qscheme must be per-tensor. ``None`` (what a ``FixedQParamsQuantizationSpec``
            leaves unset) means ``per_tensor_affine`` and the dtype's full range.
        is_dynamic: must be False.

    >>> import torch
    >>> obs = FixedQParamsObserver(scale=2.0 / 256, zero_point=128)
    >>> scale, zero_point = obs.calculate_qparams()
    >>> scale.item(), zero_point.item(), obs.quant_min, obs.quant_max
    (0.0078125, 128, 0, 255)
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        scale: float,
        zero_point: int,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme | None = torch.per_tensor_affine,
        quant_min: int | None = 0,
        quant_max: int | None = 255,
        is_dynamic: bool = False,
    ) -> None:
        owner = type(self).__name__
        if is_dynamic:
            raise QuantizationConfigError(
                f"{owner}: is_dynamic=True is not supported; fixed qparams are static."
            )
        # prepare passes a FixedQParamsQuantizationSpec's fields, whose defaults are None.
        qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        check_qscheme(qscheme, PER_TENSOR_QSCHEMES, owner=owner)
        quant_min, quant_max = resolve_quant_range(dtype, quant_min, quant_max, owner=owner)
        check_fixed_qparams(scale, zero_point, quant_min, quant_max, owner=owner)
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qscheme = qscheme
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed ``(scale, zero_point)`` buffers."""
        return self.scale, self.zero_point
