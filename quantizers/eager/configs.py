"""Configs of the eager ``quantize_`` workflow, with torchao 0.18's names, fields and defaults.

A config says *what* to quantize; :mod:`quantizers.eager.kernels` decides *how it runs*
on the device. Each config validates itself when built, so a setting that no CPU
kernel can honour fails here, naming the field, the value and what is accepted,
instead of later as a silent float fallback.

torchao's field types are mirrored by small local types (:class:`MappingType`,
:class:`PerRow`, :class:`PerTensor`, :class:`PerGroup`, :class:`Int4PackingFormat`,
:class:`Int4ChooseQParamsAlgorithm`); torchao's own objects of those types are also
accepted (read by name and fields), so code written for torchao only changes its
imports.

>>> cfg = Int4WeightOnlyConfig(group_size=32)
>>> cfg.group_size, cfg.int4_packing_format.value
(32, 'plain')
>>> Int4WeightOnlyConfig(group_size=48)
Traceback (most recent call last):
...
pt2e.errors.QuantizationConfigError: Int4WeightOnlyConfig: group_size=48 is not supported; allowed: 32, 64, 128, 256.
>>> Int8DynamicActivationInt8WeightConfig().granularity
PerRow(dim=-1)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# One home for the mapping and granularity types: the affine observers' (torchao has one too).
from observers.errors import ArgumentTypeError, QuantizationConfigError
from observers.granularity import Granularity, MappingType, PerGroup, PerRow, PerTensor

__all__ = [
    "EagerQuantizationConfig",
    "Granularity",
    "Int4ChooseQParamsAlgorithm",
    "Int4PackingFormat",
    "Int4WeightOnlyConfig",
    "Int8DynamicActivationInt8WeightConfig",
    "Int8WeightOnlyConfig",
    "MappingType",
    "PerGroup",
    "PerRow",
    "PerTensor",
]

INT4_GROUP_SIZES = (32, 64, 128, 256)


class Int4PackingFormat(enum.StrEnum):
    """torchao's int4 layout names. On CPU only the default ``PLAIN`` has a kernel here.

    torchao's ``PLAIN`` means its CUDA layout; on a CPU this workflow packs for
    ``aten._weight_int4pack_mm_for_cpu`` instead (the weight's repr names that layout).
    The other formats are GPU layouts and are refused.

    >>> Int4PackingFormat("plain") is Int4PackingFormat.PLAIN
    True
    """

    PLAIN = "plain"
    PRESHUFFLED = "preshuffled"
    PLAIN_INT32 = "plain_int32"
    TILE_PACKED_TO_4D = "tile_packed_to_4d"


class Int4ChooseQParamsAlgorithm(enum.StrEnum):
    """How int4 scales and zero points are chosen (torchao's names).

    ``TINYGEMM`` (the default) here means min/max affine qparams from
    :func:`observers.qparams.qparams_from_min_max` stored in the tinygemm kernel's
    ``(scale, zero)`` form; ``HQQ`` is not implemented and is refused.

    >>> Int4ChooseQParamsAlgorithm.TINYGEMM.value
    'tinygemm'
    """

    TINYGEMM = "tinygemm"
    HQQ = "hqq"


class EagerQuantizationConfig:
    """Base of the configs :func:`quantizers.eager.quantize_` accepts (torchao's ``AOBaseConfig``).

    >>> isinstance(Int8WeightOnlyConfig(), EagerQuantizationConfig)
    True
    """


def _same_named_enum(value: Any, enum_cls: type[enum.Enum], owner: str, field: str) -> Any:
    """``value`` as a member of ``enum_cls``; torchao's enums and strings are read by name/value."""
    if isinstance(value, enum_cls):
        return value
    name = getattr(value, "name", None)
    if isinstance(value, enum.Enum) and isinstance(name, str) and name in enum_cls.__members__:
        return enum_cls[name]
    if isinstance(value, str):
        for member in enum_cls:
            if value in (member.name, member.value):
                return member
    allowed = ", ".join(m.name for m in enum_cls)
    raise QuantizationConfigError(f"{owner}: {field}={value!r} is not a {enum_cls.__name__}; allowed: {allowed}.")


def _as_granularity(value: Any, owner: str, field: str) -> Granularity:
    """Our granularity object for ``value``; torchao's ``PerRow()`` etc. are read by class name and fields."""
    if isinstance(value, Granularity):
        return value
    kind = type(value).__name__
    if kind == "PerTensor":
        return PerTensor()
    if kind == "PerRow":
        return PerRow(dim=getattr(value, "dim", -1))
    if kind == "PerGroup" and isinstance(getattr(value, "group_size", None), int):
        return PerGroup(value.group_size)
    raise ArgumentTypeError(
        f"{owner}: {field}={value!r} is not a granularity; pass PerRow(), PerTensor() or PerGroup(n)."
    )


def _check_version(owner: str, version: int) -> None:
    if version != 2:
        raise QuantizationConfigError(
            f"{owner}: version={version!r} is not supported; allowed: 2 (torchao removed version 1)."
        )


def _check_row(owner: str, field: str, granularity: Granularity) -> None:
    if isinstance(granularity, PerRow) and granularity.dim != -1:
        raise QuantizationConfigError(
            f"{owner}: {field}=PerRow(dim={granularity.dim}) is not supported; allowed: PerRow(dim=-1) "
            "(one scale per output channel / per token)."
        )


@dataclass(frozen=True)
class Int4WeightOnlyConfig(EagerQuantizationConfig):
    """int4 weight-only: uint4 asymmetric per-group weights, float activations.

    Fields and defaults are torchao 0.18's. ``group_size`` in 32, 64, 128, 256; the
    input features of every quantized linear must be a multiple of it.
    ``set_inductor_config`` is accepted and ignored: this workflow never changes
    global ``torch._inductor`` settings. ``int4_tile_packed_ntile`` only matters for
    torchao's CUDA layout and is only validated.

    >>> import torch
    >>> from quantizers.eager import quantize_
    >>> m = torch.nn.Sequential(torch.nn.Linear(64, 32)).eval()
    >>> quantize_(m, Int4WeightOnlyConfig(group_size=32))
    >>> m[0].weight.group_size
    32
    """

    group_size: int = 128
    set_inductor_config: bool = True
    int4_packing_format: Int4PackingFormat = Int4PackingFormat.PLAIN
    int4_choose_qparams_algorithm: Int4ChooseQParamsAlgorithm = Int4ChooseQParamsAlgorithm.TINYGEMM
    int4_tile_packed_ntile: int = 8
    version: int = 2

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.group_size, bool) or self.group_size not in INT4_GROUP_SIZES:
            allowed = ", ".join(str(g) for g in INT4_GROUP_SIZES)
            raise QuantizationConfigError(
                f"{owner}: group_size={self.group_size!r} is not supported; allowed: {allowed}."
            )
        fmt = _same_named_enum(self.int4_packing_format, Int4PackingFormat, owner, "int4_packing_format")
        algo = _same_named_enum(
            self.int4_choose_qparams_algorithm, Int4ChooseQParamsAlgorithm, owner,
            "int4_choose_qparams_algorithm",
        )
        object.__setattr__(self, "int4_packing_format", fmt)
        object.__setattr__(self, "int4_choose_qparams_algorithm", algo)
        if fmt is not Int4PackingFormat.PLAIN:
            raise QuantizationConfigError(
                f"{owner}: int4_packing_format={fmt.value!r} is a GPU layout with no CPU kernel; "
                "allowed: 'plain' (packed for aten._weight_int4pack_mm_for_cpu)."
            )
        if algo is not Int4ChooseQParamsAlgorithm.TINYGEMM:
            raise QuantizationConfigError(
                f"{owner}: int4_choose_qparams_algorithm={algo.value!r} is not implemented; "
                "allowed: 'tinygemm' (min/max affine qparams)."
            )
        if self.int4_tile_packed_ntile not in (8, 16):
            raise QuantizationConfigError(
                f"{owner}: int4_tile_packed_ntile={self.int4_tile_packed_ntile!r} is not supported; "
                "allowed: 8, 16."
            )
        _check_version(owner, self.version)


@dataclass(frozen=True)
class Int8WeightOnlyConfig(EagerQuantizationConfig):
    """int8 weight-only: int8 symmetric weights (per output channel or per tensor), float activations.

    Fields and defaults are torchao 0.18's. ``group_size`` must stay ``None`` (as in
    torchao); ``granularity=PerGroup(n)`` is refused because no CPU kernel runs
    grouped int8 weights (torchao dequantizes the whole weight on every call there).

    >>> Int8WeightOnlyConfig().granularity
    PerRow(dim=-1)
    >>> Int8WeightOnlyConfig(granularity=PerGroup(32))
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: Int8WeightOnlyConfig: granularity=PerGroup(group_size=32) has no CPU kernel (it would dequantize the whole weight on every call); allowed: PerRow(), PerTensor(). For grouped weights use Int4WeightOnlyConfig(group_size=...).
    """

    group_size: int | None = None
    granularity: Granularity | None = PerRow()
    set_inductor_config: bool = True
    version: int = 2

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_version(owner, self.version)
        if self.group_size is not None:
            raise QuantizationConfigError(
                f"{owner}: group_size={self.group_size!r} is not supported; allowed: None "
                f"(as in torchao, pass granularity=PerGroup({self.group_size}) instead)."
            )
        granularity = _as_granularity(
            PerRow() if self.granularity is None else self.granularity, owner, "granularity"
        )
        object.__setattr__(self, "granularity", granularity)
        if isinstance(granularity, PerGroup):
            raise QuantizationConfigError(
                f"{owner}: granularity={granularity} has no CPU kernel (it would dequantize the whole "
                "weight on every call); allowed: PerRow(), PerTensor(). For grouped weights use "
                "Int4WeightOnlyConfig(group_size=...)."
            )
        _check_row(owner, "granularity", granularity)


@dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(EagerQuantizationConfig):
    """int8 dynamic activations (per token or per tensor, chosen at run time) x int8 symmetric weights.

    Fields and defaults are torchao 0.18's. ``granularity`` is one granularity for
    both or ``[activation, weight]``, each ``PerRow()`` or ``PerTensor()``.
    ``act_mapping_type`` is ``SYMMETRIC`` or ``ASYMMETRIC``. ``reduce_range`` uses
    7-bit ranges (-64..63) for activations and weights. ``weight_only_decode`` is
    refused when ``True`` (torchao 0.18 no longer reads it either).

    >>> cfg = Int8DynamicActivationInt8WeightConfig(granularity=[PerTensor(), PerRow()])
    >>> cfg.activation_granularity, cfg.weight_granularity
    (PerTensor(), PerRow(dim=-1))
    """

    act_mapping_type: MappingType | None = MappingType.SYMMETRIC
    weight_only_decode: bool = False
    granularity: Granularity | list[Granularity] | None = PerRow()
    set_inductor_config: bool = True
    version: int = 2
    reduce_range: bool | None = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_version(owner, self.version)
        mapping = _same_named_enum(
            MappingType.SYMMETRIC if self.act_mapping_type is None else self.act_mapping_type,
            MappingType, owner, "act_mapping_type",
        )
        if mapping not in (MappingType.SYMMETRIC, MappingType.ASYMMETRIC):
            raise QuantizationConfigError(
                f"{owner}: act_mapping_type={mapping.name} is not supported; allowed: SYMMETRIC, ASYMMETRIC."
            )
        object.__setattr__(self, "act_mapping_type", mapping)
        if self.weight_only_decode:
            raise QuantizationConfigError(
                f"{owner}: weight_only_decode=True is not supported; allowed: False "
                "(use Int8WeightOnlyConfig for weight-only layers)."
            )
        raw = PerRow() if self.granularity is None else self.granularity
        if isinstance(raw, list | tuple):
            if len(raw) != 2:
                raise QuantizationConfigError(
                    f"{owner}: granularity={raw!r} must be one granularity or a list of two "
                    "([activation, weight])."
                )
            pair = [_as_granularity(g, owner, "granularity") for g in raw]
            object.__setattr__(self, "granularity", pair)
        else:
            pair = [_as_granularity(raw, owner, "granularity")] * 2
            object.__setattr__(self, "granularity", pair[0])
        for g in pair:
            if not isinstance(g, PerRow | PerTensor):
                raise QuantizationConfigError(
                    f"{owner}: granularity={g} is not supported; allowed: PerRow(), PerTensor()."
                )
            _check_row(owner, "granularity", g)
        object.__setattr__(self, "reduce_range", bool(self.reduce_range))

    @property
    def activation_granularity(self) -> Granularity:
        """The activation's granularity (the first of a ``[activation, weight]`` pair)."""
        g = self.granularity
        return g[0] if isinstance(g, list) else g  # type: ignore[return-value]

    @property
    def weight_granularity(self) -> Granularity:
        """The weight's granularity (the second of a ``[activation, weight]`` pair)."""
        g = self.granularity
        return g[1] if isinstance(g, list) else g  # type: ignore[return-value]
