"""Checks on dtype / qscheme / quant range combinations, with errors that say how to fix them.

Every check raises :class:`~observers.errors.QuantizationConfigError` whose
message names the owner (the class being built), the argument, the value it
got and the values it accepts. torchao raises ``AssertionError: ''`` or a
``NotImplementedError`` for the same mistakes.

>>> import torch
>>> from observers.validation import check_qscheme, PER_TENSOR_QSCHEMES
>>> check_qscheme(torch.per_channel_affine, PER_TENSOR_QSCHEMES, owner="MinMaxObserver")
Traceback (most recent call last):
...
observers.errors.QuantizationConfigError: MinMaxObserver: qscheme=torch.per_channel_affine is not supported; allowed: torch.per_tensor_affine, torch.per_tensor_symmetric.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from observers.errors import QuantizationConfigError

__all__ = [
    "ALL_QSCHEMES",
    "OBSERVER_DTYPES",
    "PER_CHANNEL_QSCHEMES",
    "PER_TENSOR_QSCHEMES",
    "check_dtype",
    "check_quant_range",
    "check_qscheme",
    "dtype_bounds",
    "is_float_qparams",
    "is_per_channel",
    "is_per_tensor",
    "is_symmetric",
]

PER_TENSOR_QSCHEMES: tuple[torch.qscheme, ...] = (
    torch.per_tensor_affine,
    torch.per_tensor_symmetric,
)
PER_CHANNEL_QSCHEMES: tuple[torch.qscheme, ...] = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
ALL_QSCHEMES: tuple[torch.qscheme, ...] = PER_TENSOR_QSCHEMES + PER_CHANNEL_QSCHEMES

# The dtypes torchao's uniform observers accept (the ``quantize`` op's target dtype).
OBSERVER_DTYPES: tuple[torch.dtype, ...] = (
    torch.qint8,
    torch.quint8,
    torch.quint4x2,
    torch.qint32,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.float8_e5m2,
    torch.float8_e4m3fn,
)

# Representable integer range of each quantized storage dtype. A custom
# [quant_min, quant_max] must fit inside it (int4 is int8 storage with -8..7).
_DTYPE_BOUNDS: dict[torch.dtype, tuple[int, int]] = {
    torch.qint8: (-128, 127),
    torch.int8: (-128, 127),
    torch.quint8: (0, 255),
    torch.uint8: (0, 255),
    torch.quint4x2: (0, 15),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.uint16: (0, 2**16 - 1),
    torch.qint32: (-(2**31), 2**31 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
}


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
    return qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def is_float_qparams(qscheme: torch.qscheme | None) -> bool:
    """True for ``per_channel_affine_float_qparams`` (float zero point, used by embeddings).

    >>> import torch
    >>> is_float_qparams(torch.per_channel_affine_float_qparams)
    True
    """
    return qscheme == torch.per_channel_affine_float_qparams


def dtype_bounds(dtype: torch.dtype) -> tuple[int, int] | None:
    """The integer range a quantized dtype can store, or ``None`` if it is not an integer type.

    >>> import torch
    >>> dtype_bounds(torch.qint8), dtype_bounds(torch.uint8), dtype_bounds(torch.float16)
    ((-128, 127), (0, 255), None)
    """
    return _DTYPE_BOUNDS.get(dtype)


def _allowed(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


def check_qscheme(
    qscheme: object, allowed: Iterable[torch.qscheme], *, owner: str, hint: str = ""
) -> None:
    """Raise unless ``qscheme`` is one of ``allowed``.

    >>> import torch
    >>> check_qscheme(torch.per_tensor_affine, PER_TENSOR_QSCHEMES, owner="MinMaxObserver")
    """
    allowed = tuple(allowed)
    if qscheme not in allowed:
        message = f"{owner}: qscheme={qscheme} is not supported; allowed: {_allowed(allowed)}."
        raise QuantizationConfigError(f"{message} {hint}".rstrip())


def check_dtype(dtype: object, allowed: Iterable[torch.dtype], *, owner: str) -> None:
    """Raise unless ``dtype`` is one of ``allowed``.

    >>> import torch
    >>> check_dtype(torch.float64, (torch.qint8, torch.quint8), owner="MinMaxObserver")
    Traceback (most recent call last):
    ...
    observers.errors.QuantizationConfigError: MinMaxObserver: dtype=torch.float64 is not supported; allowed: torch.qint8, torch.quint8.
    """
    allowed = tuple(allowed)
    if dtype not in allowed:
        raise QuantizationConfigError(
            f"{owner}: dtype={dtype} is not supported; allowed: {_allowed(allowed)}."
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
    observers.errors.QuantizationConfigError: MinMaxObserver: quant_max=300 does not fit dtype=torch.uint8; allowed: 0 <= quant_min < quant_max <= 255.
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
