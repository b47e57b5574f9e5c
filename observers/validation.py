"""Checks on dtype / qscheme / quant range combinations, with errors that say how to fix them.

Every check raises :class:`~pt2e.errors.QuantizationConfigError` whose
message names the owner (the class being built), the argument, the value it
got and the values it accepts. torchao raises ``AssertionError: ''`` or a
``NotImplementedError`` for the same mistakes. The allowed values come from
:mod:`observers.facts`; observers and the spec dataclasses of
:mod:`pt2e.quantizer` call these same functions, so a spec fails when it is
built with the message its observer would give.

>>> import torch
>>> from observers.validation import check_qscheme, PER_TENSOR_QSCHEMES
>>> check_qscheme(torch.per_channel_affine, PER_TENSOR_QSCHEMES, owner="MinMaxObserver")
Traceback (most recent call last):
...
pt2e.errors.QuantizationConfigError: MinMaxObserver: qscheme=torch.per_channel_affine is not supported; allowed: torch.per_tensor_affine, torch.per_tensor_symmetric.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from observers.errors import QuantizationConfigError
from observers.facts import (
    ALL_QSCHEMES,
    FLOAT_QPARAMS_QSCHEMES,
    OBSERVER_DTYPES,
    PER_CHANNEL_QSCHEMES,
    PER_TENSOR_QSCHEMES,
    SYMMETRIC_QSCHEMES,
    int_range,
)

__all__ = [
    # re-exported from observers.facts, where they are defined
    "ALL_QSCHEMES",
    "OBSERVER_DTYPES",
    "PER_CHANNEL_QSCHEMES",
    "PER_TENSOR_QSCHEMES",
    "check_ch_axis",
    "check_dtype",
    "check_fixed_qparams",
    "check_quant_range",
    "check_qscheme",
    "dtype_bounds",
    "is_float_qparams",
    "is_per_channel",
    "is_per_tensor",
    "is_symmetric",
]


def is_per_tensor(qscheme: torch.qscheme | None) -> bool:
    """True for the per-tensor schemes.

    >>> import torch
    >>> is_per_tensor(torch.per_tensor_symmetric), is_per_tensor(torch.per_channel_affine)
    (True, False)
    """
    return qscheme in PER_TENSOR_QSCHEMES


def is_per_channel(qscheme: torch.qscheme | None) -> bool:
    """True for the per-channel schemes (including float qparams).

    >>> import torch
    >>> is_per_channel(torch.per_channel_affine_float_qparams)
    True
    """
    return qscheme in PER_CHANNEL_QSCHEMES


def is_symmetric(qscheme: torch.qscheme | None) -> bool:
    """True for the symmetric schemes.

    >>> import torch
    >>> is_symmetric(torch.per_channel_symmetric), is_symmetric(torch.per_tensor_affine)
    (True, False)
    """
    return qscheme in SYMMETRIC_QSCHEMES


def is_float_qparams(qscheme: torch.qscheme | None) -> bool:
    """True for ``per_channel_affine_float_qparams`` (float zero point, used by embeddings).

    >>> import torch
    >>> is_float_qparams(torch.per_channel_affine_float_qparams)
    True
    """
    return qscheme in FLOAT_QPARAMS_QSCHEMES


def dtype_bounds(dtype: torch.dtype) -> tuple[int, int] | None:
    """The integer range a quantized dtype can store, or ``None`` if it is not an integer type.

    >>> import torch
    >>> dtype_bounds(torch.qint8), dtype_bounds(torch.uint8), dtype_bounds(torch.float16)
    ((-128, 127), (0, 255), None)
    """
    return int_range(dtype)


def _allowed(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


def check_qscheme(
    qscheme: object, allowed: Iterable[torch.qscheme | None], *, owner: str, hint: str = ""
) -> None:
    """Raise unless ``qscheme`` is one of ``allowed``.

    >>> import torch
    >>> check_qscheme(torch.per_tensor_affine, PER_TENSOR_QSCHEMES, owner="MinMaxObserver")
    """
    allowed = tuple(allowed)
    if qscheme not in allowed:
        message = f"{owner}: qscheme={qscheme} is not supported; allowed: {_allowed(allowed)}."
        raise QuantizationConfigError(f"{message} {hint}".rstrip())


def check_dtype(
    dtype: object, allowed: Iterable[torch.dtype], *, owner: str, hint: str = ""
) -> None:
    """Raise unless ``dtype`` is one of ``allowed``.

    >>> import torch
    >>> check_dtype(torch.float64, (torch.qint8, torch.quint8), owner="MinMaxObserver")
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: MinMaxObserver: dtype=torch.float64 is not supported; allowed: torch.qint8, torch.quint8.
    """
    allowed = tuple(allowed)
    if dtype not in allowed:
        message = f"{owner}: dtype={dtype} is not supported; allowed: {_allowed(allowed)}."
        raise QuantizationConfigError(f"{message} {hint}".rstrip())


def check_ch_axis(qscheme: object, ch_axis: int | None, *, owner: str) -> None:
    """Raise if ``qscheme`` is per-channel and no ``ch_axis`` is given.

    >>> import torch
    >>> check_ch_axis(torch.per_channel_symmetric, None, owner="DerivedObserverOrFakeQuantize")
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: DerivedObserverOrFakeQuantize: qscheme=torch.per_channel_symmetric is per-channel, so ch_axis must be given (got ch_axis=None).
    """
    if qscheme in PER_CHANNEL_QSCHEMES and ch_axis is None:
        raise QuantizationConfigError(
            f"{owner}: qscheme={qscheme} is per-channel, so ch_axis must be given "
            "(got ch_axis=None)."
        )


def check_quant_range(
    quant_min: int | None, quant_max: int | None, dtype: torch.dtype, *, owner: str
) -> None:
    """Validate a user-given ``[quant_min, quant_max]``; both ``None`` means "use the dtype's range".

    The range must contain 0 (so that 0.0 is exactly representable), have
    ``quant_min < quant_max`` and fit in ``dtype``.

    >>> import torch
    >>> check_quant_range(-8, 7, torch.int8, owner="MinMaxObserver")  # int4 stored in int8
    >>> check_quant_range(0, 300, torch.uint8, owner="MinMaxObserver")
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: MinMaxObserver: quant_max=300 does not fit dtype=torch.uint8; allowed: 0 <= quant_min < quant_max <= 255.
    """
    if quant_min is None and quant_max is None:
        return
    if quant_min is None or quant_max is None:
        raise QuantizationConfigError(
            f"{owner}: quant_min={quant_min}, quant_max={quant_max}: give both or neither "
            "(neither means the full range of the dtype)."
        )
    for name, value in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise QuantizationConfigError(
                f"{owner}: {name}={value!r} must be an int, got {type(value).__name__}."
            )
    if not quant_min <= 0 <= quant_max:
        raise QuantizationConfigError(
            f"{owner}: quant_min={quant_min}, quant_max={quant_max} must include 0 "
            "(quant_min <= 0 <= quant_max) so that 0.0 is exactly representable."
        )
    if quant_min >= quant_max:
        raise QuantizationConfigError(
            f"{owner}: quant_min={quant_min} must be strictly less than quant_max={quant_max}."
        )
    bounds = dtype_bounds(dtype)
    if bounds is None:
        return
    lo, hi = bounds
    if quant_min < lo:
        raise QuantizationConfigError(
            f"{owner}: quant_min={quant_min} does not fit dtype={dtype}; "
            f"allowed: {lo} <= quant_min < quant_max <= {hi}."
        )
    if quant_max > hi:
        raise QuantizationConfigError(
            f"{owner}: quant_max={quant_max} does not fit dtype={dtype}; "
            f"allowed: {lo} <= quant_min < quant_max <= {hi}."
        )


def check_fixed_qparams(
    scale: float, zero_point: int, quant_min: int, quant_max: int, *, owner: str
) -> None:
    """Raise unless ``scale > 0`` and ``quant_min <= zero_point <= quant_max``.

    >>> check_fixed_qparams(1.0 / 256, 0, 0, 255, owner="FixedQParamsObserver")
    >>> check_fixed_qparams(0.5, 300, 0, 255, owner="FixedQParamsObserver")
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: FixedQParamsObserver: zero_point=300 must lie in [quant_min, quant_max] = [0, 255].
    """
    if not float(scale) > 0:
        raise QuantizationConfigError(f"{owner}: scale={scale} must be positive.")
    if not quant_min <= zero_point <= quant_max:
        raise QuantizationConfigError(
            f"{owner}: zero_point={zero_point} must lie in "
            f"[quant_min, quant_max] = [{quant_min}, {quant_max}]."
        )
