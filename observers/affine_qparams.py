"""The qparams math of the affine quantization family (blockwise quantize/dequantize).

One scale (and zero point) per block of ``block_size`` elements (see
:mod:`observers.granularity`) covers per-tensor, per-channel, per-group (int4
weights), per-token (activations) and per-block quantization with one set of
formulas. With ``m- = min(min_val, 0)``, ``m+ = max(max_val, 0)`` per block:

* ``SYMMETRIC``: ``scale = max(max(-m-, m+) / ((Qmax - Qmin) / 2), eps)``,
  ``zero_point = int((Qmax + Qmin + 1) / 2)`` (0 for signed ranges);
* ``SYMMETRIC_NO_CLIPPING_ERR``: ``scale = max(m- / Qmin, m+ / Qmax)``;
* ``ASYMMETRIC``: ``scale = max((m+ - m-) / (Qmax - Qmin), eps)``,
  ``zero_point = clamp(Qmin - round(m- / scale), Qmin, Qmax)``;
  ``ZeroPointDomain.NONE`` drops the zero point, ``preserve_zero=False`` with
  ``ZeroPointDomain.FLOAT`` gives tinygemm's float zero point ``m- + scale * mid``.

``quantize_affine`` is ``clamp(round(x * (1 / scale)) + zero_point, Qmin, Qmax)``,
``dequantize_affine`` is ``(q - zero_point) * scale``, each block with its own
qparams. Results match torchao's (``_affine_quantization`` for the observers'
min/max path, ``torch.ops.torchao.*`` for the ops), bit for bit.

>>> import torch
>>> x = torch.tensor([[-1.0, 0.5, 3.0, 1.5]])
>>> scale, zero_point = choose_qparams_affine(x, "SYMMETRIC", [1, 2], torch.int8, -8, 7)
>>> [round(s, 4) for s in scale.flatten().tolist()], zero_point.flatten().tolist()
([0.1333, 0.4], [0.0, 0.0])
>>> quantize_affine(x, [1, 2], scale, zero_point, torch.int8, -8, 7).tolist()
[[-7, 4, 7, 4]]
"""

from __future__ import annotations

import torch

from observers.errors import QuantizationConfigError
from observers.granularity import (
    MappingType,
    ZeroPointDomain,
    affine_quant_range,
    reduction_params,
)

__all__ = [
    "choose_qparams_affine_with_min_max",
    "choose_qparams_affine",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "storage_dtype",
]

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a quantized tensor of ``dtype`` is held in: sub-byte ints in (u)int8.

    >>> import torch
    >>> storage_dtype(torch.uint4), storage_dtype(torch.int4), storage_dtype(torch.int8)
    (torch.uint8, torch.int8, torch.int8)
    """
    name = str(dtype).removeprefix("torch.")
    if name[:-1] in ("int", "uint") and name[-1] in "1234567":
        return torch.uint8 if name.startswith("u") else torch.int8
    return dtype


def _block_view(
    t: torch.Tensor, block_size: tuple[int, ...] | list[int], input_shape: torch.Size
) -> torch.Tensor:
    """``t`` (one value per block, any layout) viewed so it broadcasts over the blocked input."""
    shape, dims = reduction_params(block_size, input_shape)
    for d in dims:
        shape[d] = 1
    return t.reshape(shape)


def _finalize_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    mapping_type: MappingType,
    target_dtype: torch.dtype,
    quant_min: float | None,
    quant_max: float | None,
    eps: float,
    preserve_zero: bool,
    zero_point_domain: ZeroPointDomain | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    qmin, qmax = affine_quant_range(target_dtype, quant_min, quant_max)
    if target_dtype in _FLOAT8 and mapping_type is not MappingType.SYMMETRIC:
        raise QuantizationConfigError(
            f"float8 target_dtype={target_dtype} needs mapping_type=MappingType.SYMMETRIC "
            f"(got {mapping_type})."
        )
    min_neg = torch.clamp(min_val, max=0) if preserve_zero else min_val
    max_pos = torch.clamp(max_val, min=0) if preserve_zero else max_val
    zero_point: torch.Tensor | None
    if mapping_type in (MappingType.SYMMETRIC, MappingType.SYMMETRIC_NO_CLIPPING_ERR):
        if not preserve_zero or zero_point_domain not in (None, ZeroPointDomain.INT):
            raise QuantizationConfigError(
                f"mapping_type={mapping_type} needs preserve_zero=True and an integer zero point "
                f"domain (got preserve_zero={preserve_zero}, zero_point_domain="
                f"{zero_point_domain}); use MappingType.ASYMMETRIC for float zero points."
            )
        if mapping_type is MappingType.SYMMETRIC:
            scale = torch.max(-min_neg, max_pos) / (float(qmax - qmin) / 2)
        else:
            scale = torch.max(min_neg / float(qmin), max_pos / float(qmax))
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.full_like(scale, int((qmax + qmin + 1) / 2))
    elif mapping_type is MappingType.ASYMMETRIC:
        scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=eps)
        if zero_point_domain is ZeroPointDomain.NONE:
            zero_point = None
        elif preserve_zero:
            zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax)
        elif zero_point_domain is ZeroPointDomain.FLOAT:
            zero_point = min_neg + scale * ((qmax + qmin + 1) / 2)
        else:
            raise QuantizationConfigError(
                "preserve_zero=False needs zero_point_domain=ZeroPointDomain.FLOAT "
                f"(got {zero_point_domain})."
            )
    else:
        raise QuantizationConfigError(
            f"mapping_type={mapping_type!r} is not supported; allowed: "
            + ", ".join(m.name for m in MappingType)
        )
    return scale, zero_point


def choose_qparams_affine_with_min_max(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    mapping_type: MappingType,
    block_size: tuple[int, ...],
    target_dtype: torch.dtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
    eps: float | None = None,
    scale_dtype: torch.dtype | None = None,
    zero_point_dtype: torch.dtype | None = None,
    preserve_zero: bool = True,
    zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(scale, zero_point)`` from per-block ``min_val``/``max_val`` (the observers' path).

    ``block_size`` is unused (the statistics are already reduced); ``eps``,
    ``scale_dtype`` and ``zero_point_dtype`` default to ``min_val``'s dtype.

    >>> import torch
    >>> s, z = choose_qparams_affine_with_min_max(torch.tensor([-1.0]), torch.tensor([3.0]),
    ...     MappingType.ASYMMETRIC, (), torch.uint8)
    >>> round(s.item(), 6), z.item()
    (0.015686, 64.0)
    """
    del block_size
    eps = torch.finfo(min_val.dtype).eps if eps is None else eps
    scale, zero_point = _finalize_qparams(
        min_val, max_val, mapping_type, target_dtype, quant_min, quant_max, eps,
        preserve_zero, zero_point_domain,
    )
    scale = scale.to(scale_dtype or min_val.dtype)
    if zero_point is not None:
        zero_point = zero_point.to(zero_point_dtype or min_val.dtype)
    return scale, zero_point


def choose_qparams_affine(
    input: torch.Tensor,
    mapping_type: str,
    block_size: list[int],
    target_dtype: torch.dtype,
    quant_min: float | None = None,
    quant_max: float | None = None,
    eps: float | None = None,
    scale_dtype: torch.dtype | None = None,
    zero_point_dtype: torch.dtype | None = None,
    keepdim: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` of each block of ``input`` (the dynamic op ``pt2e::choose_qparams_affine``).

    As torchao's op: ``eps`` defaults to the smallest normal of ``input``'s dtype,
    the asymmetric zero point is int32 unless ``zero_point_dtype`` says otherwise,
    and the results have one entry per block (``keepdim=True``: the input's rank).

    >>> import torch
    >>> s, z = choose_qparams_affine(torch.tensor([[-1.0, 2.0], [0.5, 4.0]]), "ASYMMETRIC",
    ...                              [1, 2], torch.uint8)
    >>> [round(v, 6) for v in s.tolist()], z.tolist(), z.dtype
    ([0.011765, 0.015686], [85, 0], torch.int32)
    """
    if mapping_type not in MappingType.__members__:
        raise QuantizationConfigError(
            f"mapping_type={mapping_type!r} is not supported; allowed: "
            + ", ".join(MappingType.__members__)
        )
    mapping = MappingType[mapping_type]
    shape, dims = reduction_params(block_size, input.shape)
    blocks = input.reshape(shape)
    min_val = torch.amin(blocks, dim=dims, keepdim=keepdim)
    max_val = torch.amax(blocks, dim=dims, keepdim=keepdim)
    eps = torch.finfo(input.dtype).smallest_normal if eps is None else eps
    scale, zero_point = _finalize_qparams(
        min_val, max_val, mapping, target_dtype, quant_min, quant_max, eps, True,
        ZeroPointDomain.INT,
    )
    if zero_point is None:  # the INT domain always has one; keeps the types exact
        zero_point = torch.zeros_like(scale)
    if keepdim:
        out_shape = [s // b for s, b in zip(input.shape, block_size)]
        scale, zero_point = scale.reshape(out_shape), zero_point.reshape(out_shape)
    if mapping is MappingType.ASYMMETRIC and zero_point_dtype is None:
        zero_point_dtype = torch.int32
    return scale.to(scale_dtype or input.dtype), zero_point.to(zero_point_dtype or scale.dtype)


def _zero_point_or_none(zero_point: torch.Tensor | None) -> torch.Tensor | None:
    # an absent zero point may travel through a graph as an empty tensor
    return None if zero_point is None or zero_point.numel() == 0 else zero_point


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    # rounding with a straight-through gradient, so fake quantization trains
    return t + (torch.round(t) - t).detach()


def _quantize_values(
    input: torch.Tensor,
    block_size: tuple[int, ...] | list[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: float,
    qmax: float,
    zero_point_domain: ZeroPointDomain | None,
) -> torch.Tensor:
    if input.dtype not in _FLOAT_INPUTS:
        raise QuantizationConfigError(
            f"quantize_affine: input dtype {input.dtype} is not supported; allowed: "
            + ", ".join(str(d) for d in _FLOAT_INPUTS)
        )
    s = _block_view(scale, block_size, input.shape)
    z = _zero_point_or_none(zero_point)
    x = input.reshape(reduction_params(block_size, input.shape)[0])
    if zero_point_domain is ZeroPointDomain.FLOAT:
        if z is None:
            raise QuantizationConfigError("ZeroPointDomain.FLOAT needs a zero_point.")
        low = _block_view(z, block_size, input.shape) - s * ((qmax + qmin + 1) / 2)
        q = _round_ste((x - low) / s)
    else:
        q = _round_ste(x * (1.0 / s))
        if z is not None and zero_point_domain is not ZeroPointDomain.NONE:
            q = q + _block_view(z, block_size, input.shape)
    return torch.clamp(q, qmin, qmax).reshape(input.shape)


def _dequantize_values(
    input: torch.Tensor,
    block_size: tuple[int, ...] | list[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: float,
    qmax: float,
    zero_point_domain: ZeroPointDomain | None,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    s = _block_view(scale, block_size, input.shape)
    z = _zero_point_or_none(zero_point)
    x = input.reshape(reduction_params(block_size, input.shape)[0]).to(output_dtype)
    if zero_point_domain is ZeroPointDomain.FLOAT:
        out = (x - (qmax + qmin + 1) / 2) * s
        if z is not None:
            out = out + _block_view(z, block_size, input.shape)
    else:
        if z is not None and zero_point_domain is not ZeroPointDomain.NONE:
            x = x - _block_view(z, block_size, input.shape).to(output_dtype)
        out = x * s
    return out.reshape(input.shape).to(output_dtype)


def quantize_affine(
    input: torch.Tensor,
    block_size: list[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    output_dtype: torch.dtype,
    quant_min: float | None = None,
    quant_max: float | None = None,
    zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
) -> torch.Tensor:
    """Quantize each block of ``input`` with its own qparams; the result is held in
    :func:`storage_dtype` of ``output_dtype``.

    >>> import torch
    >>> quantize_affine(torch.tensor([[0.1, -0.2, 1.0, 2.0]]), [1, 2],
    ...                 torch.tensor([0.1, 0.5]), torch.tensor([0, 1]), torch.int8).tolist()
    [[1, -2, 3, 5]]
    """
    qmin, qmax = affine_quant_range(output_dtype, quant_min, quant_max)
    q = _quantize_values(input, block_size, scale, zero_point, qmin, qmax, zero_point_domain)
    return q.to(storage_dtype(output_dtype))


def dequantize_affine(
    input: torch.Tensor,
    block_size: list[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    input_dtype: torch.dtype,
    quant_min: float | None = None,
    quant_max: float | None = None,
    zero_point_domain: ZeroPointDomain | None = ZeroPointDomain.INT,
    *,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` per block, in ``output_dtype``.

    >>> import torch
    >>> q = torch.tensor([[1, -2, 3, 5]], dtype=torch.int8)
    >>> dequantize_affine(q, [1, 2], torch.tensor([0.1, 0.5]), torch.tensor([0, 1]),
    ...                   torch.int8).tolist()
    [[0.10000000149011612, -0.20000000298023224, 1.0, 2.0]]
    """
    if input.dtype != storage_dtype(input_dtype):
        raise QuantizationConfigError(
            f"dequantize_affine: input has dtype {input.dtype} but input_dtype={input_dtype} "
            f"is stored as {storage_dtype(input_dtype)}."
        )
    if output_dtype not in _FLOAT_INPUTS:
        raise QuantizationConfigError(
            f"dequantize_affine: output_dtype={output_dtype} is not supported; allowed: "
            + ", ".join(str(d) for d in _FLOAT_INPUTS)
        )
    qmin, qmax = affine_quant_range(input_dtype, quant_min, quant_max)
    return _dequantize_values(
        input, block_size, scale, zero_point, qmin, qmax, zero_point_domain, output_dtype
    )


def fake_quantize_affine(
    input: torch.Tensor,
    block_size: tuple[int, ...] | list[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    quant_dtype: torch.dtype,
    quant_min: float | None = None,
    quant_max: float | None = None,
    zero_point_domain: ZeroPointDomain = ZeroPointDomain.INT,
) -> torch.Tensor:
    """``dequantize_affine(quantize_affine(x))`` without the integer casts, in ``input``'s dtype.

    >>> import torch
    >>> fake_quantize_affine(torch.tensor([[0.12, 0.26]]), (1, 2), torch.tensor([0.1]),
    ...                      torch.tensor([0]), torch.int8).tolist()
    [[0.10000000149011612, 0.30000001192092896]]
    """
    qmin, qmax = affine_quant_range(quant_dtype, quant_min, quant_max)
    q = _quantize_values(input, block_size, scale, zero_point, qmin, qmax, zero_point_domain)
    return _dequantize_values(
        q, block_size, scale, zero_point, qmin, qmax, zero_point_domain, input.dtype
    )
