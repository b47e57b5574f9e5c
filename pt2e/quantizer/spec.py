"""The quantization specs a quantizer attaches to graph edges and node outputs.

Field names, order and defaults follow ``torchao.quantization.pt2e.quantizer`` so
that quantizers written for torchao port by changing imports. Unlike torchao, each
spec validates itself and names the field, the value and the allowed set.

>>> import torch
>>> from observers import MinMaxObserver
>>> act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
...                        qscheme=torch.per_tensor_affine,
...                        observer_or_fake_quant_ctr=MinMaxObserver)
>>> act.dtype
torch.uint8
>>> QuantizationSpec(dtype=torch.int8, quant_min=0, quant_max=300,
...                  observer_or_fake_quant_ctr=MinMaxObserver)
Traceback (most recent call last):
...
observers.errors.QuantizationConfigError: QuantizationSpec.quant_max=300 is outside the range of dtype torch.int8 [-128, 127]; pick quant_min/quant_max inside it
"""

from __future__ import annotations

import enum
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.fx import Node

from observers.errors import QuantizationConfigError

__all__ = [
    "EdgeOrNode",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "SpecKind",
    "spec_kind",
]

EdgeOrNode = tuple[Node, Node] | Node
"""An input edge ``(producer, consumer)`` or a node (meaning its output)."""

# dtype -> (min, max) of the integer it stores; float dtypes carry no range.
_INT_RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.quint8: (0, 255),
    torch.int8: (-128, 127),
    torch.qint8: (-128, 127),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.uint16: (0, 2**16 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.qint32: (-(2**31), 2**31 - 1),
}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_QSCHEMES = (
    torch.per_tensor_affine,
    torch.per_tensor_symmetric,
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
_PER_CHANNEL = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)


def _fail(cls: str, name: str, value: Any, why: str) -> QuantizationConfigError:
    return QuantizationConfigError(f"{cls}.{name}={value!r} {why}")


def _check_dtype_and_range(
    cls: str,
    dtype: torch.dtype,
    quant_min: int | None,
    quant_max: int | None,
    *,
    allow_float: bool = True,
) -> None:
    allowed = list(_INT_RANGES) + (list(_FLOAT_DTYPES) if allow_float else [])
    if dtype not in allowed:
        raise _fail(cls, "dtype", dtype, f"is not supported; use one of {allowed}")
    if quant_min is not None and quant_max is not None and quant_min > quant_max:
        raise QuantizationConfigError(
            f"{cls}.quant_min={quant_min} is larger than quant_max={quant_max}; "
            "quant_min must be <= quant_max"
        )
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
            if v is not None and not lo <= v <= hi:
                raise _fail(
                    cls, name, v,
                    f"is outside the range of dtype {dtype} [{lo}, {hi}]; "
                    "pick quant_min/quant_max inside it",
                )


def _check_qscheme(cls: str, qscheme: Any, ch_axis: int | None) -> None:
    if qscheme is not None and qscheme not in _QSCHEMES:
        raise _fail(cls, "qscheme", qscheme, f"is not a quantization scheme; use one of {list(_QSCHEMES)}")
    if ch_axis is not None and ch_axis < 0:
        raise _fail(cls, "ch_axis", ch_axis, "is negative; give the channel axis as a non-negative index")
    if qscheme in _PER_CHANNEL and ch_axis is None:
        raise _fail(cls, "ch_axis", ch_axis, f"is required with the per-channel qscheme {qscheme}")


class QuantizationSpecBase(ABC):  # noqa: B024 - a marker base, as in torchao
    """Base class of every spec that says how one tensor (an edge or an output) is quantized.

    >>> issubclass(QuantizationSpec, QuantizationSpecBase)
    True
    """


@dataclass(eq=True, frozen=True)
class QuantizationSpec(QuantizationSpecBase):
    """Quantize a tensor with an observer (PTQ) or fake quantizer (QAT) built from a constructor.

    >>> import torch
    >>> from observers import PerChannelMinMaxObserver
    >>> w = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
    ...                      qscheme=torch.per_channel_symmetric, ch_axis=0,
    ...                      observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    >>> w.ch_axis
    0
    """

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable[..., Any]
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_dtype_and_range("QuantizationSpec", self.dtype, self.quant_min, self.quant_max)
        _check_qscheme("QuantizationSpec", self.qscheme, self.ch_axis)
        if not callable(self.observer_or_fake_quant_ctr):
            raise _fail(
                "QuantizationSpec", "observer_or_fake_quant_ctr", self.observer_or_fake_quant_ctr,
                "is not callable; pass an observer class or Observer.with_args(...)",
            )


@dataclass(eq=True, frozen=True)
class FixedQParamsQuantizationSpec(QuantizationSpecBase):
    """Quantize with fixed, known qparams (e.g. sigmoid's output in [0, 1]: scale 1/256, zp 0).

    >>> import torch
    >>> FixedQParamsQuantizationSpec(dtype=torch.uint8, scale=1.0 / 256, zero_point=0,
    ...                              quant_min=0, quant_max=255).scale
    0.00390625
    """

    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_dtype_and_range(
            "FixedQParamsQuantizationSpec", self.dtype, self.quant_min, self.quant_max,
            allow_float=False,
        )
        _check_qscheme("FixedQParamsQuantizationSpec", self.qscheme, None)
        if not float(self.scale) > 0:
            raise _fail("FixedQParamsQuantizationSpec", "scale", self.scale, "must be a positive number")


@dataclass(eq=True, frozen=True)
class SharedQuantizationSpec(QuantizationSpecBase):
    """Use the same observer (and so the same qparams) as another edge or node output.

    ``edge_or_node`` is either ``(producer, consumer)`` or a node; e.g. a ``cat``
    annotates its second input as ``SharedQuantizationSpec((first_input, cat))``.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> SharedQuantizationSpec((x, relu)).edge_or_node == (x, relu)
    True
    """

    edge_or_node: EdgeOrNode

    def __post_init__(self) -> None:
        e = self.edge_or_node
        ok = isinstance(e, Node) or (
            isinstance(e, tuple) and len(e) == 2 and all(isinstance(n, Node) for n in e)
        )
        if not ok:
            raise _fail(
                "SharedQuantizationSpec", "edge_or_node", e,
                "must be a torch.fx.Node or a (producer Node, consumer Node) tuple",
            )


@dataclass(eq=True, frozen=True)
class DerivedQuantizationSpec(QuantizationSpecBase):
    """Qparams computed from other observers, e.g. bias scale = input scale * weight scale.

    ``derive_qparams_fn`` receives the observers of ``derived_from`` (in order) and
    returns ``(scale, zero_point)`` tensors.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, lin = list(gm.graph.nodes)[:2]
    >>> def bias_qparams(obs):
    ...     (s_x, _), (s_w, _) = obs[0].calculate_qparams(), obs[1].calculate_qparams()
    ...     return s_x * s_w, torch.zeros_like(s_x, dtype=torch.int32)
    >>> spec = DerivedQuantizationSpec(derived_from=[(x, lin)], derive_qparams_fn=bias_qparams,
    ...                                dtype=torch.int32, qscheme=torch.per_tensor_symmetric)
    >>> spec.dtype
    torch.int32
    """

    derived_from: list[EdgeOrNode]
    derive_qparams_fn: Callable[[list[Any]], tuple[Tensor, Tensor]]
    dtype: torch.dtype
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_dtype_and_range(
            "DerivedQuantizationSpec", self.dtype, self.quant_min, self.quant_max
        )
        _check_qscheme("DerivedQuantizationSpec", self.qscheme, self.ch_axis)
        if not self.derived_from:
            raise _fail(
                "DerivedQuantizationSpec", "derived_from", self.derived_from,
                "is empty; list the edges/nodes whose observers the qparams derive from",
            )

    # a list field makes the dataclass unhashable; hash by identity like torchao's users expect
    __hash__ = object.__hash__


@dataclass
class QuantizationAnnotation:
    """How a node's inputs and output are quantized; stored in ``node.meta["quantization_annotation"]``.

    >>> QuantizationAnnotation().allow_implicit_sharing
    True
    """

    input_qspec_map: dict[Node, QuantizationSpecBase | None] = field(default_factory=dict)
    output_qspec: QuantizationSpecBase | None = None
    allow_implicit_sharing: bool = True
    _annotated: bool = False


class SpecKind(enum.Enum):
    """What a spec asks for, decided by its fields (so torchao's spec classes work too)."""

    OBSERVED = "observed"
    FIXED = "fixed"
    SHARED = "shared"
    DERIVED = "derived"


def spec_kind(spec: object) -> SpecKind:
    """Classify a spec by its fields rather than its class.

    Quantizers written against torchao attach torchao's spec classes; reading them by
    field lets our ``prepare_pt2e`` honour them unchanged.

    >>> import torch
    >>> spec_kind(FixedQParamsQuantizationSpec(dtype=torch.uint8, scale=0.5, zero_point=0))
    <SpecKind.FIXED: 'fixed'>
    """
    if hasattr(spec, "edge_or_node"):
        return SpecKind.SHARED
    if hasattr(spec, "derived_from") and hasattr(spec, "derive_qparams_fn"):
        return SpecKind.DERIVED
    if hasattr(spec, "observer_or_fake_quant_ctr"):
        return SpecKind.OBSERVED
    if hasattr(spec, "scale") and hasattr(spec, "zero_point"):
        return SpecKind.FIXED
    raise QuantizationConfigError(
        f"{type(spec).__name__} is not a quantization spec: expected QuantizationSpec, "
        "FixedQParamsQuantizationSpec, SharedQuantizationSpec or DerivedQuantizationSpec"
    )
