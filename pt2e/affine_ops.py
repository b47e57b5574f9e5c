"""The affine quantize/dequantize ops, ``torch.ops.pt2e.*``, and the convert step that emits them.

torchao registers its blockwise ops as ``torch.ops.torchao.*``; ours live in the
``pt2e`` namespace with the same schemas and semantics (integer zero point
domain), so a graph converted here does not need torchao to run::

    pt2e::quantize_affine(Tensor input, SymInt[] block_size, Tensor scale, Tensor? zero_point,
        ScalarType output_dtype, Scalar? quant_min=None, Scalar? quant_max=None) -> Tensor
    pt2e::dequantize_affine(Tensor input, SymInt[] block_size, Tensor scale, Tensor? zero_point,
        ScalarType input_dtype, Scalar? quant_min=None, Scalar? quant_max=None,
        ScalarType output_dtype=float32) -> Tensor
    pt2e::choose_qparams_affine(Tensor? input, str mapping_type, SymInt[] block_size,
        ScalarType target_dtype, Scalar? quant_min=None, Scalar? quant_max=None,
        float? eps=None, ScalarType? scale_dtype=None, ScalarType? zero_point_dtype=None,
        bool keepdim=False) -> (Tensor, Tensor)

The math is :mod:`observers.affine`'s. Sub-byte dtypes (``torch.int4``,
``torch.uint4``, ...) are held in int8/uint8. The ops are registered
``CompositeExplicitAutograd`` with fake (meta) kernels, so re-exporting a
converted graph keeps them as single nodes that a lowering can recognise (and
refuse with a clear message, see :func:`lowering.contract.check_affine_ops`).
Importing this module (``pt2e`` does) registers the ops; it changes no other global
state. :func:`pt2e.convert.replace_affine_observer` emits them.

>>> import torch
>>> q = torch.ops.pt2e.quantize_affine(torch.tensor([[0.1, -0.2, 1.0, 2.0]]), [1, 2],
...                                    torch.tensor([0.1, 0.5]), torch.tensor([0, 1]), torch.int8)
>>> q.tolist()
[[1, -2, 3, 5]]
>>> torch.ops.pt2e.dequantize_affine(q, [1, 2], torch.tensor([0.1, 0.5]), torch.tensor([0, 1]),
...                                  torch.int8).tolist()
[[0.10000000149011612, -0.20000000298023224, 1.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from observers.affine_qparams import (
    choose_qparams_affine,
    dequantize_affine,
    quantize_affine,
    storage_dtype,
)
from observers.errors import UnsupportedOperationError
from observers.granularity import MappingType, reduction_params

__all__ = [
    "NAMESPACE",
    "AFFINE_QUANTIZE_OPS",
    "AFFINE_DEQUANTIZE_OPS",
    "AFFINE_CHOOSE_QPARAMS_OPS",
    "AFFINE_OPS",
    "AFFINE",
]

NAMESPACE = "pt2e"

_SCHEMAS = {
    "quantize_affine": (
        "quantize_affine(Tensor input, SymInt[] block_size, Tensor scale, Tensor? zero_point, "
        "ScalarType output_dtype, Scalar? quant_min=None, Scalar? quant_max=None) -> Tensor"
    ),
    "dequantize_affine": (
        "dequantize_affine(Tensor input, SymInt[] block_size, Tensor scale, Tensor? zero_point, "
        "ScalarType input_dtype, Scalar? quant_min=None, Scalar? quant_max=None, "
        "ScalarType output_dtype=float) -> Tensor"
    ),
    "choose_qparams_affine": (
        "choose_qparams_affine(Tensor? input, str mapping_type, SymInt[] block_size, "
        "ScalarType target_dtype, Scalar? quant_min=None, Scalar? quant_max=None, "
        "float? eps=None, ScalarType? scale_dtype=None, ScalarType? zero_point_dtype=None, "
        "bool keepdim=False) -> (Tensor, Tensor)"
    ),
}


def _quantize(
    input: torch.Tensor, block_size: list[int], scale: torch.Tensor,
    zero_point: torch.Tensor | None, output_dtype: torch.dtype,
    quant_min: float | None = None, quant_max: float | None = None,
) -> torch.Tensor:
    return quantize_affine(input, block_size, scale, zero_point, output_dtype, quant_min, quant_max)


def _dequantize(
    input: torch.Tensor, block_size: list[int], scale: torch.Tensor,
    zero_point: torch.Tensor | None, input_dtype: torch.dtype,
    quant_min: float | None = None, quant_max: float | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    return dequantize_affine(
        input, block_size, scale, zero_point, input_dtype, quant_min, quant_max,
        output_dtype=output_dtype,
    )


def _choose(
    input: torch.Tensor | None, mapping_type: str, block_size: list[int],
    target_dtype: torch.dtype, quant_min: float | None = None, quant_max: float | None = None,
    eps: float | None = None, scale_dtype: torch.dtype | None = None,
    zero_point_dtype: torch.dtype | None = None, keepdim: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    if input is None:
        raise UnsupportedOperationError(
            "pt2e::choose_qparams_affine needs an input tensor (input=None is reserved for "
            "torchao's min/max variant)."
        )
    return choose_qparams_affine(
        input, mapping_type, block_size, target_dtype, quant_min, quant_max, eps, scale_dtype,
        zero_point_dtype, keepdim,
    )


def _quantize_fake(
    input: torch.Tensor, block_size: list[int], scale: torch.Tensor,
    zero_point: torch.Tensor | None, output_dtype: torch.dtype,
    quant_min: float | None = None, quant_max: float | None = None,
) -> torch.Tensor:
    return torch.empty_like(input, dtype=storage_dtype(output_dtype))


def _dequantize_fake(
    input: torch.Tensor, block_size: list[int], scale: torch.Tensor,
    zero_point: torch.Tensor | None, input_dtype: torch.dtype,
    quant_min: float | None = None, quant_max: float | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    return torch.empty_like(input, dtype=output_dtype)


def _choose_fake(
    input: torch.Tensor | None, mapping_type: str, block_size: list[int],
    target_dtype: torch.dtype, quant_min: float | None = None, quant_max: float | None = None,
    eps: float | None = None, scale_dtype: torch.dtype | None = None,
    zero_point_dtype: torch.dtype | None = None, keepdim: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    if input is None:
        raise UnsupportedOperationError("pt2e::choose_qparams_affine needs an input tensor.")
    if keepdim:
        shape = [s // b for s, b in zip(input.shape, block_size)]
    else:
        view, dims = reduction_params(block_size, input.shape)
        shape = [s for i, s in enumerate(view) if i not in dims]
    if zero_point_dtype is None:
        asymmetric = mapping_type == MappingType.ASYMMETRIC.name
        zero_point_dtype = torch.int32 if asymmetric else input.dtype
    return (
        input.new_empty(shape, dtype=scale_dtype or input.dtype),
        input.new_empty(shape, dtype=zero_point_dtype),
    )


def _register() -> None:
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")  # noqa: TOR901 (kept alive below)
    kernels: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "quantize_affine": (_quantize, _quantize_fake),
        "dequantize_affine": (_dequantize, _dequantize_fake),
        "choose_qparams_affine": (_choose, _choose_fake),
    }
    for name, (kernel, fake) in kernels.items():
        if hasattr(getattr(torch.ops, NAMESPACE), name):
            continue  # already registered (this module was re-executed)
        lib.define(_SCHEMAS[name])
        lib.impl(name, kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=lib)
    _LIBRARIES.append(lib)


_LIBRARIES: list[torch.library.Library] = []  # a Library unregisters its ops when collected
_register()

# torch.ops.pt2e, typed loosely: its attributes appear at registration
AFFINE: Any = getattr(torch.ops, NAMESPACE)
AFFINE_QUANTIZE_OPS = frozenset({AFFINE.quantize_affine.default})
AFFINE_DEQUANTIZE_OPS = frozenset({AFFINE.dequantize_affine.default})
AFFINE_CHOOSE_QPARAMS_OPS = frozenset({AFFINE.choose_qparams_affine.default})
AFFINE_OPS = AFFINE_QUANTIZE_OPS | AFFINE_DEQUANTIZE_OPS | AFFINE_CHOOSE_QPARAMS_OPS
