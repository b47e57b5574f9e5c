r"""Quantization-parameter math: an observed ``[min, max]`` range to ``(scale, zero_point)``.

With ``[Qmin, Qmax]`` the integer range, ``m- = min(min_val, 0)`` and
``m+ = max(max_val, 0)`` (the range always contains 0 so that 0.0 and zero
padding quantize exactly):

* **affine** (``per_tensor_affine`` / ``per_channel_affine``)::

      scale      = max((m+ - m-) / (Qmax - Qmin), eps)
      zero_point = clamp(Qmin - round(m- / scale), Qmin, Qmax)

* **symmetric** (``per_tensor_symmetric`` / ``per_channel_symmetric``)::

      scale      = max(max(-m-, m+) / ((Qmax - Qmin) / 2), eps)
      zero_point = 0 for signed dtypes; 128 for quint8/uint8 with the default
                   range, (Qmin + Qmax) // 2 with a custom range; 2**15 for uint16

* **float qparams** (``per_channel_affine_float_qparams``, embeddings)::

      scale      = (max - min) / (Qmax - Qmin), or 1.0 where that is <= eps
      zero_point = -min / scale   (a float)

Worked example, uint8 affine on ``[-1, 3]``: ``scale = 4 / 255 = 0.015686``,
``zero_point = 0 - round(-1 / 0.015686) = round(63.75) = 64``.

>>> import torch
>>> scale, zp = qparams_from_min_max(
...     torch.tensor(-1.0), torch.tensor(3.0), qscheme=torch.per_tensor_affine,
...     dtype=torch.quint8, quant_min=0, quant_max=255)
>>> round(scale.item(), 6), zp.item()
(0.015686, 64)
"""

from __future__ import annotations

import torch

from observers.errors import QuantizationConfigError
from observers.facts import int_range
from observers.validation import (
    ALL_QSCHEMES,
    check_qscheme,
    check_quant_range,
    is_float_qparams,
    is_symmetric,
)

__all__ = [
    "default_quant_range",
    "qparams_from_min_max",
    "resolve_quant_range",
    "symmetric_zero_point",
]

DEFAULT_EPS: float = torch.finfo(torch.float32).eps
_EIGHT_BIT = (torch.qint8, torch.int8, torch.quint8, torch.uint8)


def default_quant_range(dtype: torch.dtype, reduce_range: bool = False) -> tuple[int, int]:
    """The integer range an observer uses for ``dtype`` when no custom range is given.

    ``reduce_range`` drops one bit for 8-bit types (an old x86 ``vpmaddubsw``
    overflow workaround); it does not affect 16/32-bit types. Dtypes with no
    integer meaning (``quint4x2``, float8) fall back to ``0..15`` as torchao does.

    >>> import torch
    >>> default_quant_range(torch.qint8), default_quant_range(torch.quint8, reduce_range=True)
    ((-128, 127), (0, 127))
    >>> default_quant_range(torch.int16), default_quant_range(torch.int32)
    ((-32768, 32767), (-2147483648, 2147483647))
    """
    bounds = int_range(dtype)
    if bounds is None:
        return 0, 15
    lo, hi = bounds
    if reduce_range and dtype in _EIGHT_BIT:
        return lo // 2, hi // 2
    return lo, hi


def resolve_quant_range(
    dtype: torch.dtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
    reduce_range: bool = False,
    *,
    owner: str = "observer",
) -> tuple[int, int]:
    """The effective ``(quant_min, quant_max)``: the custom range if given (validated), else the dtype's.

    With a custom range, ``reduce_range`` halves both ends (floor division),
    matching torchao.

    >>> import torch
    >>> resolve_quant_range(torch.int8, -8, 7)  # int4 in int8 storage
    (-8, 7)
    >>> resolve_quant_range(torch.quint8, 0, 255, reduce_range=True)
    (0, 127)
    >>> resolve_quant_range(torch.qint8)
    (-128, 127)
    """
    check_quant_range(quant_min, quant_max, dtype, owner=owner)  # raises on a half-given range
    if quant_min is None or quant_max is None:
        return default_quant_range(dtype, reduce_range)
    if reduce_range:
        return quant_min // 2, quant_max // 2
    return quant_min, quant_max


def symmetric_zero_point(
    dtype: torch.dtype, quant_min: int, quant_max: int, customized_range: bool
) -> int:
    """The zero point of symmetric quantization: mid-range for unsigned dtypes, else 0.

    >>> import torch
    >>> symmetric_zero_point(torch.quint8, 0, 255, customized_range=False)
    128
    >>> symmetric_zero_point(torch.uint8, 0, 15, customized_range=True)
    7
    >>> symmetric_zero_point(torch.qint8, -128, 127, customized_range=False)
    0
    """
    if dtype in (torch.quint8, torch.uint8):
        return (quant_min + quant_max) // 2 if customized_range else 128
    if dtype == torch.uint16:
        return 2**15
    return 0


def qparams_from_min_max(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    *,
    qscheme: torch.qscheme,
    dtype: torch.dtype,
    quant_min: int,
    quant_max: int,
    eps: torch.Tensor | float = DEFAULT_EPS,
    customized_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute ``(scale, zero_point)`` from an observed range (see the module docstring for formulas).

    ``min_val``/``max_val`` are 0-d (per-tensor) or 1-d with one entry per
    channel, finite and with ``min_val <= max_val`` (observers check this before
    calling). Results have shape ``[1]`` for per-tensor input and ``[C]`` per
    channel; ``scale`` is float32; ``zero_point`` is int32 (affine), int64
    (symmetric) or float32 (float qparams), the dtypes torchao returns.
    ``customized_range`` only matters for the symmetric uint8 zero point.

    >>> import torch
    >>> s, z = qparams_from_min_max(torch.tensor([-2.0, -0.5]), torch.tensor([1.0, 0.25]),
    ...     qscheme=torch.per_channel_symmetric, dtype=torch.qint8, quant_min=-128, quant_max=127)
    >>> [round(v, 6) for v in s.tolist()], z.tolist()
    ([0.015686, 0.003922], [0, 0])
    """
    check_qscheme(qscheme, ALL_QSCHEMES, owner="qparams_from_min_max")
    if quant_min >= quant_max:
        raise QuantizationConfigError(
            f"qparams_from_min_max: quant_min={quant_min} must be < quant_max={quant_max}."
        )
    device = min_val.device
    eps_t = eps if isinstance(eps, torch.Tensor) else torch.tensor([eps], device=device)
    eps_t = eps_t.to(device)
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))

    if is_symmetric(qscheme):
        max_abs = torch.max(-min_neg, max_pos)
        scale = torch.max(max_abs / (float(quant_max - quant_min) / 2), eps_t)
        zp_value = symmetric_zero_point(dtype, quant_min, quant_max, customized_range)
        zero_point = torch.full(min_val.shape, zp_value, dtype=torch.int64, device=device)
    elif is_float_qparams(qscheme):
        scale = (max_val - min_val) / float(quant_max - quant_min)
        scale = torch.where(scale > eps_t, scale, torch.ones_like(scale))
        zero_point = -1 * min_val / scale
    else:
        scale = torch.max((max_pos - min_neg) / float(quant_max - quant_min), eps_t)
        # int64 arithmetic so that int32 ranges cannot overflow before the clamp.
        zero_point = quant_min - torch.round(min_neg / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, quant_min, quant_max).to(torch.int32)

    if scale.dim() == 0:
        scale = scale.reshape(1)
    if zero_point.dim() == 0:
        zero_point = zero_point.reshape(1)
    return scale.to(torch.float32), zero_point
