"""The quantization facts every layer validates against, written once.

Integer range of each dtype, the plain storage dtype behind torch's quantized
dtypes, the qscheme families, and which dtypes and qschemes each role accepts.
``observers`` is the lowest layer: observers (:mod:`observers.validation`), the
spec dataclasses and config accessors (:mod:`pt2e.quantizer`), convert and the
backend quantizers all read this table, so they cannot drift apart.

>>> import torch
>>> int_range(torch.quint8), int_range(torch.int16), int_range(torch.float32)
((0, 255), (-32768, 32767), None)
>>> [q for q in PER_CHANNEL_QSCHEMES if q in SYMMETRIC_QSCHEMES]
[torch.per_channel_symmetric]
"""

from __future__ import annotations

import torch

__all__ = [
    "INT_RANGES",
    "FLOAT_DTYPES",
    "FLOAT8_DTYPES",
    "STORAGE_DTYPES",
    "PER_TENSOR_QSCHEMES",
    "PER_CHANNEL_QSCHEMES",
    "SYMMETRIC_QSCHEMES",
    "FLOAT_QPARAMS_QSCHEMES",
    "ALL_QSCHEMES",
    "OBSERVER_DTYPES",
    "SPEC_DTYPES",
    "FIXED_QPARAMS_SPEC_DTYPES",
    "SPEC_QSCHEMES",
    "ACTIVATION_QSCHEMES",
    "WEIGHT_QSCHEMES",
    "BIAS_DTYPES",
    "int_range",
    "storage_dtype",
]

# dtype -> (min, max) of the integer it stores. A custom [quant_min, quant_max]
# must fit inside it (int4 is int8 storage with -8..7).
INT_RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.quint8: (0, 255),
    torch.int8: (-128, 127),
    torch.qint8: (-128, 127),
    torch.quint4x2: (0, 15),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.uint16: (0, 2**16 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.qint32: (-(2**31), 2**31 - 1),
}

# "Quantizing" to these keeps the value float (fp16/bf16 casts, a float placeholder).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
FLOAT8_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e5m2, torch.float8_e4m3fn)

# torch's quantized dtypes -> the plain dtype ``quantized_decomposed`` ops take
STORAGE_DTYPES: dict[torch.dtype, torch.dtype] = {
    torch.quint8: torch.uint8,
    torch.qint8: torch.int8,
    torch.qint32: torch.int32,
    torch.quint4x2: torch.uint8,
}

# Tuples, not sets: error messages list the allowed values in this order.
PER_TENSOR_QSCHEMES: tuple[torch.qscheme, ...] = (
    torch.per_tensor_affine,
    torch.per_tensor_symmetric,
)
PER_CHANNEL_QSCHEMES: tuple[torch.qscheme, ...] = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
SYMMETRIC_QSCHEMES: tuple[torch.qscheme, ...] = (
    torch.per_tensor_symmetric,
    torch.per_channel_symmetric,
)
FLOAT_QPARAMS_QSCHEMES: tuple[torch.qscheme, ...] = (torch.per_channel_affine_float_qparams,)
ALL_QSCHEMES: tuple[torch.qscheme, ...] = PER_TENSOR_QSCHEMES + PER_CHANNEL_QSCHEMES

# The dtypes the uniform observers accept (the ``quantize`` op's target dtype), as torchao.
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
    *FLOAT8_DTYPES,
)

# What a QuantizationSpec / DerivedQuantizationSpec may ask for: an integer or float8
# dtype convert can emit q/dq ops for, or a float dtype (fp16 casts, float placeholders).
_SPEC_INT_DTYPES: tuple[torch.dtype, ...] = tuple(d for d in INT_RANGES if d != torch.quint4x2)
SPEC_DTYPES: tuple[torch.dtype, ...] = _SPEC_INT_DTYPES + FLOAT8_DTYPES + FLOAT_DTYPES
# fixed qparams only make sense for an integer dtype
FIXED_QPARAMS_SPEC_DTYPES: tuple[torch.dtype, ...] = _SPEC_INT_DTYPES
# ``None`` means "the observer's default"
SPEC_QSCHEMES: tuple[torch.qscheme | None, ...] = (*ALL_QSCHEMES, None)

# Per role, what QuantizationConfig's accessors accept (torchao's rules).
ACTIVATION_QSCHEMES: tuple[torch.qscheme, ...] = PER_TENSOR_QSCHEMES
WEIGHT_QSCHEMES: tuple[torch.qscheme | None, ...] = (*SYMMETRIC_QSCHEMES, None)
BIAS_DTYPES: tuple[torch.dtype, ...] = (torch.float32,)


def int_range(dtype: torch.dtype) -> tuple[int, int] | None:
    """``(min, max)`` of the integers ``dtype`` stores, or ``None`` if it is not an integer type.

    >>> import torch
    >>> int_range(torch.qint8), int_range(torch.uint8), int_range(torch.float16)
    ((-128, 127), (0, 255), None)
    """
    return INT_RANGES.get(dtype)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The plain dtype a quantized dtype is stored as (``quint8`` -> ``uint8``); others unchanged.

    >>> import torch
    >>> storage_dtype(torch.qint8), storage_dtype(torch.int16)
    (torch.int8, torch.int16)
    """
    return STORAGE_DTYPES.get(dtype, dtype)
