"""The quantization specs a quantizer attaches to graph edges and node outputs.

Field names, order and defaults follow ``torchao.quantization.pt2e.quantizer`` so
that quantizers written for torchao port by changing imports. Unlike torchao, each
spec validates itself when it is built, with the check functions (and so the
messages) of the observers that prepare will build from it
(:mod:`observers.validation`, reading :mod:`observers.facts`): a spec no observer
could accept fails here, not at prepare time.

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
pt2e.errors.QuantizationConfigError: QuantizationSpec: quant_max=300 does not fit dtype=torch.int8; allowed: -128 <= quant_min < quant_max <= 127.
>>> QuantizationSpec(dtype=torch.uint8, quant_min=10, quant_max=20,
...                  observer_or_fake_quant_ctr=MinMaxObserver)
Traceback (most recent call last):
...
pt2e.errors.QuantizationConfigError: QuantizationSpec: quant_min=10, quant_max=20 must include 0 (quant_min <= 0 <= quant_max) so that 0.0 is exactly representable.
"""

from __future__ import annotations

import enum
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.fx import Node

from observers.errors import QuantizationConfigError
from observers.facts import (
    FIXED_QPARAMS_SPEC_DTYPES,
    PER_TENSOR_QSCHEMES,
    SPEC_DTYPES,
    SPEC_QSCHEMES,
    int_range,
)
from observers.validation import (
    check_ch_axis,
    check_dtype,
    check_fixed_qparams,
    check_qscheme,
    check_quant_range,
)

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

def _fail(cls: str, name: str, value: Any, why: str) -> QuantizationConfigError:
    return QuantizationConfigError(f"{cls}: {name}={value!r} {why}")


def _check_observed_fields(
    cls: str,
    dtype: torch.dtype,
    quant_min: int | None,
    quant_max: int | None,
    qscheme: Any,
    ch_axis: int | None,
    *,
    axis_required: bool = True,
) -> None:
    """The checks an observer makes on these fields, in the observer's order, plus ch_axis.

    ``axis_required=False`` (a :class:`QuantizationSpec`, as in torchao) lets a
    per-channel spec leave ``ch_axis`` out: its observer's default axis applies.
    """
    check_qscheme(qscheme, SPEC_QSCHEMES, owner=cls)
    check_dtype(dtype, SPEC_DTYPES, owner=cls)
    check_quant_range(quant_min, quant_max, dtype, owner=cls)
    if ch_axis is not None and ch_axis < 0:  # torchao's spec rule; observers take negative axes
        raise _fail(cls, "ch_axis", ch_axis, "is negative; give the channel axis as a non-negative index")
    if axis_required:
        check_ch_axis(qscheme, ch_axis, owner=cls)


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

    A per-channel spec may leave ``ch_axis`` out, as in torchao: the observer's
    default axis (``PerChannelMinMaxObserver``'s is 0) applies.

    >>> QuantizationSpec(dtype=torch.int8, qscheme=torch.per_channel_symmetric,
    ...                  observer_or_fake_quant_ctr=PerChannelMinMaxObserver).ch_axis is None
    True
    """

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable[..., Any]
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_observed_fields("QuantizationSpec", self.dtype, self.quant_min, self.quant_max,
                               self.qscheme, self.ch_axis, axis_required=False)
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
        # the checks FixedQParamsObserver makes, which prepare builds from this spec
        # (qscheme None means per_tensor_affine, no range means the dtype's)
        cls = "FixedQParamsQuantizationSpec"
        check_qscheme(self.qscheme, (*PER_TENSOR_QSCHEMES, None), owner=cls)
        check_dtype(self.dtype, FIXED_QPARAMS_SPEC_DTYPES, owner=cls)
        check_quant_range(self.quant_min, self.quant_max, self.dtype, owner=cls)
        lo, hi = int_range(self.dtype) or (0, 0)
        check_fixed_qparams(
            self.scale, self.zero_point,
            lo if self.quant_min is None else self.quant_min,
            hi if self.quant_max is None else self.quant_max,
            owner=cls,
        )


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
        _check_observed_fields("DerivedQuantizationSpec", self.dtype, self.quant_min,
                               self.quant_max, self.qscheme, self.ch_axis)
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
    # Not a field (the fields are torchao's QuantizationAnnotation's): a class default
    # that the X86/XPU quantizers override per instance on the last node of a quantized
    # fusion pattern, as torchao's _X86InductorQuantizationAnnotation field is set; code
    # written against torchao reads it, nothing in this pipeline does.
    _is_output_of_quantized_pattern: ClassVar[bool] = False


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
