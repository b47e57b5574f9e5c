"""Granularities and block sizes: which elements of a tensor share one scale.

torchao's affine family describes granularity as a ``block_size`` tuple with
one entry per dimension: each block of that shape shares a scale and zero
point. For a ``(3, 3, 10, 10)`` tensor::

    granularity                         block_size
    PerTensor()                         (3, 3, 10, 10)
    PerAxis(axis=0)                     (1, 3, 10, 10)
    PerGroup(2)                         (1, 1, 1, 2)
    PerToken()                          (1, 1, 1, 10)
    PerRow() (dim=-1)                   (1, 1, 1, 10)
    PerBlock((5, 2))                    (1, 1, 5, 2)

>>> get_block_size((3, 3, 10, 10), PerAxis(axis=1))
(3, 1, 10, 10)
>>> get_block_size((8, 64), PerGroup(32))
(1, 32)
>>> MappingType.SYMMETRIC.name, ZeroPointDomain.INT.name
('SYMMETRIC', 'INT')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from observers.errors import QuantizationConfigError

__all__ = [
    "MappingType",
    "ZeroPointDomain",
    "TorchAODType",
    "Granularity",
    "PerTensor",
    "PerAxis",
    "PerGroup",
    "PerRow",
    "PerToken",
    "PerBlock",
    "get_block_size",
    "reduction_params",
    "AFFINE_DTYPE_BOUNDS",
    "affine_quant_range",
]


class MappingType(enum.Enum):
    """How the float range maps onto the integer range.

    ``SYMMETRIC`` maps ``[-max|x|, max|x|]`` onto ``[quant_min, quant_max]``;
    ``SYMMETRIC_NO_CLIPPING_ERR`` picks the larger of ``min_neg / quant_min`` and
    ``max_pos / quant_max`` as the scale, so no value is clipped; ``ASYMMETRIC``
    maps ``[min, max]`` (widened to contain 0) with a zero point.

    >>> [m.name for m in MappingType]
    ['SYMMETRIC', 'SYMMETRIC_NO_CLIPPING_ERR', 'ASYMMETRIC']
    """

    SYMMETRIC = enum.auto()
    SYMMETRIC_NO_CLIPPING_ERR = enum.auto()
    ASYMMETRIC = enum.auto()


class ZeroPointDomain(enum.Enum):
    """Where the zero point lives.

    ``INT``: ``q = round(x / scale) + zero_point``; ``FLOAT`` (tinygemm):
    ``q = round((x - (zero_point - scale * mid)) / scale)``; ``NONE``: no zero
    point, ``q = round(x / scale)``.

    >>> [d.name for d in ZeroPointDomain]
    ['INT', 'FLOAT', 'NONE']
    """

    INT = enum.auto()
    FLOAT = enum.auto()
    NONE = enum.auto()


class TorchAODType(enum.Enum):
    """torchao's placeholders for sub-byte signed dtypes (deprecated there: use ``torch.int4`` etc.).

    >>> TorchAODType.INT4.name
    'INT4'
    """

    INT1 = enum.auto()
    INT2 = enum.auto()
    INT3 = enum.auto()
    INT4 = enum.auto()
    INT5 = enum.auto()
    INT6 = enum.auto()
    INT7 = enum.auto()


@dataclass(frozen=True)
class Granularity:
    """Base of the granularities.

    >>> isinstance(PerGroup(32), Granularity)
    True
    """


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor.

    >>> get_block_size((4, 6), PerTensor())
    (4, 6)
    """


@dataclass(frozen=True)
class PerAxis(Granularity):
    """One scale per index of ``axis`` (the kept axis; every other one is reduced).

    >>> get_block_size((4, 6), PerAxis(0)), get_block_size((4, 6), PerAxis(1))
    ((1, 6), (4, 1))
    """

    axis: int


@dataclass(frozen=True)
class PerGroup(Granularity):
    """One scale per ``group_size`` consecutive elements of the last dimension.

    >>> get_block_size((8, 16), PerGroup(4))
    (1, 4)
    """

    group_size: int


@dataclass(frozen=True)
class PerRow(Granularity):
    """One scale per row: ``dim`` is the reduced dimension (default the last).

    >>> get_block_size((4, 6), PerRow()), get_block_size((4, 6), PerRow(0))
    ((1, 6), (4, 1))
    """

    dim: int = -1


@dataclass(frozen=True)
class PerToken(Granularity):
    """One scale per token: every dimension but the last is kept.

    >>> get_block_size((2, 3, 4), PerToken())
    (1, 1, 4)
    """


@dataclass(frozen=True)
class PerBlock(Granularity):
    """One scale per block of ``block_size`` on the trailing dimensions (left-padded with 1s).

    >>> get_block_size((2, 8, 8), PerBlock((4, 4)))
    (1, 4, 4)
    """

    block_size: tuple[int, ...]


def _divisible(input_shape: tuple[int, ...], block: tuple[int, ...], granularity: object) -> None:
    for i, (size, b) in enumerate(zip(input_shape, block)):
        if b <= 0 or size % b:
            raise QuantizationConfigError(
                f"{granularity}: dimension {i} of shape {tuple(input_shape)} (size {size}) is not "
                f"divisible by the block size {b} (block_size={tuple(block)}). Pick a group/block "
                "size that divides the tensor, or pad the tensor."
            )


def get_block_size(input_shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """The ``block_size`` tuple of ``granularity`` for a tensor of ``input_shape``.

    >>> get_block_size((2, 3, 8), PerGroup(4)), get_block_size((2, 3, 8), PerToken())
    ((1, 1, 4), (1, 1, 8))
    >>> get_block_size((8, 6), PerGroup(4))
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: PerGroup(group_size=4): dimension 1 of shape (8, 6) (size 6) is not divisible by the block size 4 (block_size=(1, 4)). Pick a group/block size that divides the tensor, or pad the tensor.
    """
    shape = tuple(int(s) for s in input_shape)
    rank = len(shape)
    if isinstance(granularity, PerTensor):
        return shape
    if isinstance(granularity, (PerAxis, PerRow)):
        dim = granularity.axis if isinstance(granularity, PerAxis) else granularity.dim
        if not -rank <= dim < rank:
            raise QuantizationConfigError(
                f"{granularity}: dimension {dim} is out of range for a tensor of shape {shape}."
            )
        if isinstance(granularity, PerAxis):
            axis_block = list(shape)
            axis_block[dim] = 1
            return tuple(axis_block)
        row_block = [1] * rank
        row_block[dim] = shape[dim]
        return tuple(row_block)
    if isinstance(granularity, PerToken):
        return (1,) * (rank - 1) + shape[-1:]
    if isinstance(granularity, PerGroup):
        group = (1,) * (rank - 1) + (int(granularity.group_size),)
        _divisible(shape, group, granularity)
        return group
    if isinstance(granularity, PerBlock):
        block = tuple(int(b) for b in granularity.block_size)
        if len(block) > rank:
            raise QuantizationConfigError(
                f"{granularity}: block_size has {len(block)} dimensions but the tensor has "
                f"shape {shape}."
            )
        block = (1,) * (rank - len(block)) + block
        _divisible(shape, block, granularity)
        return block
    raise QuantizationConfigError(
        f"granularity={granularity!r} is not supported; use PerTensor, PerAxis, PerGroup, "
        "PerRow, PerToken or PerBlock."
    )


def reduction_params(
    block_size: tuple[int, ...] | list[int], input_size: tuple[int, ...] | torch.Size
) -> tuple[list[int], list[int]]:
    """The shape to ``view`` a tensor as, and the dims to reduce, so each block reduces to one value.

    A blocked dimension of size ``n`` with block ``b`` (``1 < b < n``) becomes two,
    ``(n // b, b)``, and the second is reduced.

    >>> reduction_params((3, 3, 2, 10), (3, 3, 10, 10))
    ([3, 3, 5, 2, 10], [0, 1, 3, 4])
    """
    if len(block_size) != len(input_size):
        raise QuantizationConfigError(
            f"block_size={tuple(block_size)} has {len(block_size)} entries but the tensor has "
            f"shape {tuple(input_size)}; give one entry per dimension (see get_block_size)."
        )
    _divisible(tuple(input_size), tuple(block_size), f"block_size={tuple(block_size)}")
    shape: list[int] = []
    dims: list[int] = []
    for size, block in zip(input_size, block_size):
        if block not in (1, size):
            shape += [size // block, block]
            dims.append(len(shape) - 1)
        else:
            shape.append(size)
            if block != 1:
                dims.append(len(shape) - 1)
    return shape, dims


# dtype -> (quant_min, quant_max) of the affine family (torchao's bounds): 8-32 bit integers,
# the sub-byte torch.intN / torch.uintN and the float8 types (finite range).
AFFINE_DTYPE_BOUNDS: dict[torch.dtype, tuple[float, float]] = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    **{getattr(torch, f"uint{b}"): (0, 2**b - 1) for b in range(1, 8)},
    **{getattr(torch, f"int{b}"): (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in range(1, 8)},
    **{
        d: (float(torch.finfo(d).min), float(torch.finfo(d).max))
        for d in (torch.float8_e4m3fn, torch.float8_e5m2)
    },
}


def affine_quant_range(
    dtype: torch.dtype, quant_min: float | None = None, quant_max: float | None = None
) -> tuple[float, float]:
    """``(quant_min, quant_max)``: the given ones, else ``dtype``'s bounds; checked against them.

    >>> import torch
    >>> affine_quant_range(torch.int4), affine_quant_range(torch.int8, -8, 7)
    ((-8, 7), (-8, 7))
    >>> affine_quant_range(torch.float8_e4m3fn)
    (-448.0, 448.0)
    """
    if dtype not in AFFINE_DTYPE_BOUNDS:
        allowed = ", ".join(str(d) for d in AFFINE_DTYPE_BOUNDS)
        raise QuantizationConfigError(
            f"target_dtype={dtype} is not supported by the affine quantization ops; "
            f"allowed: {allowed}."
        )
    lo, hi = AFFINE_DTYPE_BOUNDS[dtype]
    qmin = lo if quant_min is None else quant_min
    qmax = hi if quant_max is None else quant_max
    if qmin < lo or qmax > hi or qmin >= qmax:
        raise QuantizationConfigError(
            f"quant_min={qmin}, quant_max={qmax} do not fit target_dtype={dtype}; "
            f"allowed: {lo} <= quant_min < quant_max <= {hi}."
        )
    return qmin, qmax
