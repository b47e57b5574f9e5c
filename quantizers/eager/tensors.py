"""Quantized ``nn.Linear`` weights: tensor subclasses holding integer weights and their qparams.

A quantized weight keeps the float weight's ``shape`` and ``dtype`` (so the
module still reads as ``nn.Linear(in, out)`` of that dtype) and stores, instead of
the float values, the integers, their scales, and the name of the kernel that
runs it here (:mod:`quantizers.eager.kernels`). ``F.linear`` on it calls that
kernel; everything else a module does with a parameter is supported too:
``detach``/``nn.Parameter``, ``clone``/``deepcopy``, ``.to(dtype)`` (re-chooses the
kernel), ``copy_`` from a weight of the same kind (``load_state_dict``),
``torch.save``/``torch.load`` (also with ``weights_only=True``) and
``torch.compile(fullgraph=True)`` (the subclass flattens to its inner tensors).
Any other op raises :class:`~pt2e.errors.UnsupportedOperationError` naming it;
``dequantize()`` gives the float weight the kernel multiplies by.

The integer math is :func:`observers.qparams.qparams_from_min_max`: uint4 affine per
group for int4 (stored as the tinygemm kernel's ``(q - 8) * scale + zero``), int8
symmetric per output channel (or per tensor) for int8.

>>> import torch
>>> w = Int4WeightTensor.from_float(torch.randn(32, 64), group_size=32)
>>> w
Int4WeightTensor(shape=(32, 64), dtype=torch.float32, group_size=32, layout=tinygemm_cpu[...], kernel=int4_tinygemm_cpu_via_bf16)
>>> y = torch.nn.functional.linear(torch.randn(2, 64), w)
>>> y.shape, y.dtype
(torch.Size([2, 32]), torch.float32)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import return_and_correct_aliasing

from observers.errors import ArgumentValueError, QuantizationConfigError, UnsupportedOperationError
from observers.qparams import qparams_from_min_max, resolve_quant_range

from .kernels import (
    INT4_N_MULTIPLE,
    INT8_K_MULTIPLE,
    Kernel,
    Scheme,
    cpu_capability,
    kernel_by_name,
    select_kernel,
    unpack_int4_cpu,
)

__all__ = [
    "Int4WeightTensor",
    "Int8DynamicWeightTensor",
    "Int8WeightTensor",
    "QuantizedLinearWeight",
]

aten = torch.ops.aten
_Handler = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class QuantizedLinearWeight(torch.Tensor):
    """Base of the quantized weights: a wrapper subclass with named inner tensors and attributes.

    A subclass lists its inner tensors in ``tensor_fields`` and its plain
    attributes (str/int/bool: they become ``torch.compile`` guards) in
    ``attribute_fields``; ``scheme`` names its row of the kernel table.

    >>> import torch
    >>> w = Int8WeightTensor.from_float(torch.randn(16, 32))
    >>> isinstance(w, QuantizedLinearWeight), w.tensor_fields, w.scheme
    (True, ('qdata', 'scale'), 'int8_weight_only')
    >>> w.to(torch.bfloat16).kernel  # .to(dtype) chooses the kernel again
    'int8_weight_only_cpu'
    """

    tensor_fields: ClassVar[tuple[str, ...]] = ()
    attribute_fields: ClassVar[tuple[str, ...]] = ()
    scheme: ClassVar[Scheme]
    kernel: str

    @staticmethod
    def __new__(cls, *, shape: tuple[int, ...], dtype: torch.dtype, **fields: Any) -> Any:
        first = fields[cls.tensor_fields[0]]
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, shape, dtype=dtype, device=first.device, requires_grad=False
        )

    def __init__(self, *, shape: tuple[int, ...], dtype: torch.dtype, **fields: Any) -> None:
        for name in self.tensor_fields + self.attribute_fields:
            setattr(self, name, fields[name])

    # -- construction helpers ------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.tensor_fields + self.attribute_fields}

    def _rebuild(self, **changes: Any) -> QuantizedLinearWeight:
        fields = self._fields()
        fields.update(changes)
        dtype = fields.pop("dtype", self.dtype)
        return type(self)(shape=tuple(self.shape), dtype=dtype, **fields)

    def _kernel(self) -> Kernel:
        return kernel_by_name(self.kernel)

    def _retarget(self, dtype: torch.dtype) -> dict[str, Any]:
        """The field changes that make this weight run activations of ``dtype`` here."""
        kernel = select_kernel(self.scheme, self.device.type, dtype)
        return {"kernel": kernel.name, "dtype": dtype, **self._scales_for(kernel, dtype)}

    def _scales_for(self, kernel: Kernel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        raise UnsupportedOperationError(f"{type(self).__name__} does not define _scales_for.")

    # -- what users read -----------------------------------------------------
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float ``[out, in]`` weight this tensor's kernel multiplies by."""
        raise UnsupportedOperationError(f"{type(self).__name__} does not define dequantize.")

    def _describe(self) -> str:
        return ""

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return (f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"{self._describe()}, kernel={self.kernel})")

    # -- torch.compile / serialization ---------------------------------------
    def __tensor_flatten__(self) -> tuple[list[str], tuple[Any, ...]]:
        return list(self.tensor_fields), (self.dtype, *(getattr(self, a) for a in self.attribute_fields))

    @classmethod
    def __tensor_unflatten__(
        cls, inner: dict[str, torch.Tensor], meta: tuple[Any, ...], outer_size: Any, outer_stride: Any
    ) -> QuantizedLinearWeight:
        dtype, *attrs = meta
        return cls(shape=tuple(outer_size), dtype=dtype, **inner, **dict(zip(cls.attribute_fields, attrs)))

    def _stable_hash_for_caching(self) -> str:
        """A key for torch.compile's caches: class, shape, dtype, attributes, inner tensor metadata."""
        inner = tuple((n, tuple(t.shape), str(t.dtype), tuple(t.stride()))
                      for n, t in ((n, getattr(self, n)) for n in self.tensor_fields))
        key = (type(self).__qualname__, tuple(self.shape), str(self.dtype),
               tuple(getattr(self, a) for a in self.attribute_fields), inner)
        return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()

    def __setstate__(self, state: Any) -> None:
        # torch.load rebuilds the wrapper and hands its attributes here: check that
        # the weight can run on this machine and choose its kernel afresh.
        dict_state = state[1] if isinstance(state, tuple) else state
        for key, value in dict_state.items():
            setattr(self, key, value)
        self._check_loadable()
        for key, value in self._retarget(self.dtype).items():
            if key != "dtype":
                setattr(self, key, value)

    def _check_loadable(self) -> None:
        """Raise if this weight's stored layout cannot run here (int4: packed for another ISA)."""

    # -- torch function / dispatch --------------------------------------------
    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return _linear(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        handler = _DISPATCH.get(func)
        if handler is None:
            raise UnsupportedOperationError(
                f"{cls.__name__} does not support {func}; quantized weights only run F.linear. "
                "Call .dequantize() for a float tensor."
            )
        return handler(func, args, kwargs)


def _linear(input: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(weight, QuantizedLinearWeight) or isinstance(input, QuantizedLinearWeight):
        raise UnsupportedOperationError(
            "F.linear with a quantized tensor as the input is not supported; only as the weight."
        )
    if input.dtype != weight.dtype:
        raise ArgumentValueError(
            f"F.linear: input dtype {input.dtype} does not match the quantized weight's dtype "
            f"{weight.dtype}; call model.to({input.dtype}) (it re-chooses the kernel) or cast the input."
        )
    if input.device.type != weight.device.type:
        raise ArgumentValueError(
            f"F.linear: input on {input.device} but the quantized weight is on {weight.device}."
        )
    out_features, in_features = weight.shape
    x2d = input.reshape(-1, in_features)
    kernel = weight._kernel()
    y = kernel.run(kernel, x2d, weight, bias)
    return y.reshape(*input.shape[:-1], out_features)


_DISPATCH: dict[Any, _Handler] = {}


def _implements(*ops: Any) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for op in ops:
            _DISPATCH[op] = fn
        return fn
    return register


@_implements(aten.detach.default, aten.alias.default)
def _detach(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self: QuantizedLinearWeight = args[0]
    return return_and_correct_aliasing(func, args, kwargs, self._rebuild())


@_implements(aten.clone.default)
def _clone(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self: QuantizedLinearWeight = args[0]
    return self._rebuild(**{name: getattr(self, name).clone() for name in self.tensor_fields})


@_implements(aten._to_copy.default)
def _to_copy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self: QuantizedLinearWeight = args[0]
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != self.device.type:
        raise UnsupportedOperationError(
            f"{type(self).__name__}.to({device}): its kernels here run on {self.device.type} only; "
            "quantize the float model on the target device instead."
        )
    dtype = kwargs.get("dtype")
    if dtype is None or dtype == self.dtype:
        return self._rebuild()
    if dtype not in _FLOAT_DTYPES:
        raise UnsupportedOperationError(
            f"{type(self).__name__}.to({dtype}): a quantized weight keeps a float dtype "
            f"({', '.join(str(d) for d in _FLOAT_DTYPES)}); call .dequantize() for a float tensor."
        )
    return self._rebuild(**self._retarget(dtype))


@_implements(aten.copy_.default)
def _copy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    dst, src = args[0], args[1]
    if not isinstance(dst, QuantizedLinearWeight):
        raise UnsupportedOperationError(
            f"cannot copy a quantized {type(src).__name__} into a float tensor; quantize_ the model "
            "with the same config first (or use load_state_dict(..., assign=True))."
        )
    if (type(dst) is not type(src) or dst.shape != src.shape
            or any(getattr(dst, a) != getattr(src, a) for a in dst.attribute_fields if a != "kernel")):
        raise UnsupportedOperationError(
            f"copy_ into a {type(dst).__name__} needs a {type(dst).__name__} of the same shape and "
            f"settings, got {src!r}. To load a quantized state dict, quantize_ the model with the "
            "same config first (or use load_state_dict(..., assign=True))."
        )
    for name in dst.tensor_fields:
        getattr(dst, name).copy_(getattr(src, name).to(getattr(dst, name).dtype))
    return dst


class Int4WeightTensor(QuantizedLinearWeight):
    """int4 weight (uint4 affine, one scale and zero point per ``group_size`` inputs), tinygemm CPU layout.

    ``packed`` is ``_convert_weight_to_int4pack_for_cpu`` of the values, output rows
    zero-padded to a multiple of 16; ``scale_and_zero`` is ``[in / group_size,
    out_padded, 2]`` with ``w = (q - 8) * scale + zero``. The packed layout depends
    on the CPU's ISA (``packed_for``); loading it on a machine whose kernels use
    another layout raises instead of computing garbage.

    >>> import torch
    >>> w = torch.randn(16, 64)
    >>> q = Int4WeightTensor.from_float(w, group_size=32)
    >>> bool((q.dequantize() - w).abs().max() <= (w.abs().max() / 7.5))
    True
    """

    tensor_fields: ClassVar[tuple[str, ...]] = ("packed", "scale_and_zero")
    attribute_fields: ClassVar[tuple[str, ...]] = ("group_size", "kernel", "packed_for")
    scheme: ClassVar[Scheme] = "int4_weight_only"
    packed: torch.Tensor
    scale_and_zero: torch.Tensor
    group_size: int
    packed_for: str

    @classmethod
    def from_float(cls, weight: torch.Tensor, *, group_size: int, kernel: str | None = None) -> Int4WeightTensor:
        """Quantize a float ``[out, in]`` weight; ``kernel`` forces a kernel by name (for benchmarks)."""
        _check_weight(weight, cls.__name__)
        n, k = weight.shape
        if k % group_size:
            raise QuantizationConfigError(
                f"{cls.__name__}: in_features={k} is not a multiple of group_size={group_size}; "
                "choose a group_size that divides it, or leave this layer out with filter_fn."
            )
        chosen = _chosen(cls.scheme, weight, kernel)
        scale_dtype = chosen.scale_dtype_for(weight.dtype)
        n_padded = _round_up(n, INT4_N_MULTIPLE)
        w = F.pad(weight.detach().to(torch.float32), (0, 0, 0, n_padded - n))
        groups = w.reshape(-1, group_size)
        scale, zero_point = qparams_from_min_max(
            groups.amin(dim=1), groups.amax(dim=1), qscheme=torch.per_channel_affine,
            dtype=torch.uint8, quant_min=0, quant_max=15,
        )
        scale = scale.to(scale_dtype).to(torch.float32)  # quantize with the scale as stored
        q = torch.clamp(torch.round(groups / scale[:, None]) + zero_point[:, None], 0, 15)
        zero = (8 - zero_point).to(torch.float32) * scale  # (q - zp) * s == (q - 8) * s + (8 - zp) * s
        n_groups = k // group_size
        scale_and_zero = torch.stack(
            [scale.reshape(n_padded, n_groups), zero.reshape(n_padded, n_groups)], dim=-1
        ).transpose(0, 1).contiguous().to(scale_dtype)
        packed = aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).reshape(n_padded, k), 1)
        return cls(shape=(n, k), dtype=weight.dtype, packed=packed, scale_and_zero=scale_and_zero,
                   group_size=group_size, kernel=chosen.name, packed_for=cpu_capability())

    def _scales_for(self, kernel: Kernel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {"scale_and_zero": self.scale_and_zero.to(kernel.scale_dtype_for(dtype))}

    def _check_loadable(self) -> None:
        here = cpu_capability()
        if self.packed_for != here:
            raise UnsupportedOperationError(
                f"Int4WeightTensor{tuple(self.shape)} was packed for {self.packed_for} CPU kernels but "
                f"this process runs {here} kernels, whose int4 layout differs; re-run quantize_ on the "
                "float model here (int8 weights load anywhere)."
            )

    def int_values(self) -> torch.Tensor:
        """The ``[out, in]`` integers 0..15 (read back from the packed layout; slow, for checks)."""
        n, k = self.shape
        return unpack_int4_cpu(self.packed, self.packed.shape[0], k)[:n]

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(q - 8) * scale + zero`` in float32, then ``dtype`` (default: the weight's)."""
        n, k = self.shape
        sz = self.scale_and_zero.to(torch.float32)[:, :n]  # [groups, n, 2]
        scale = sz[..., 0].t().repeat_interleave(self.group_size, dim=1)
        zero = sz[..., 1].t().repeat_interleave(self.group_size, dim=1)
        w = (self.int_values().to(torch.float32) - 8) * scale + zero
        return w.to(dtype or self.dtype)

    def _describe(self) -> str:
        return f"group_size={self.group_size}, layout=tinygemm_cpu[{self.packed_for}]"


class Int8WeightTensor(QuantizedLinearWeight):
    """int8 symmetric weight, one scale per output channel (``per_row``) or for all (``per_tensor``).

    ``qdata`` is ``[out, in_padded]`` int8 (inputs zero-padded to a multiple of 16),
    ``scale`` is ``[out]``; ``w = qdata * scale``.

    >>> import torch
    >>> w = torch.randn(8, 20)
    >>> q = Int8WeightTensor.from_float(w)
    >>> q.qdata.shape, bool((q.dequantize() - w).abs().max() <= w.abs().max() / 127)
    (torch.Size([8, 32]), True)
    """

    tensor_fields: ClassVar[tuple[str, ...]] = ("qdata", "scale")
    attribute_fields: ClassVar[tuple[str, ...]] = ("granularity", "reduce_range", "kernel")
    scheme: ClassVar[Scheme] = "int8_weight_only"
    qdata: torch.Tensor
    scale: torch.Tensor
    granularity: str
    reduce_range: bool

    @classmethod
    def _quantize(
        cls, weight: torch.Tensor, granularity: str, reduce_range: bool, scale_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        quant_min, quant_max = resolve_quant_range(torch.int8, reduce_range=reduce_range)
        w = weight.detach().to(torch.float32)
        if granularity == "per_row":
            lo, hi, qscheme = w.amin(dim=1), w.amax(dim=1), torch.per_channel_symmetric
        else:
            lo, hi, qscheme = w.amin(), w.amax(), torch.per_tensor_symmetric
        scale, _ = qparams_from_min_max(lo, hi, qscheme=qscheme, dtype=torch.qint8,
                                        quant_min=quant_min, quant_max=quant_max)
        scale = scale.expand(w.shape[0]).to(scale_dtype).contiguous()
        q = torch.clamp(torch.round(w / scale.to(torch.float32)[:, None]), quant_min, quant_max)
        k_padded = _round_up(w.shape[1], INT8_K_MULTIPLE)
        return F.pad(q.to(torch.int8), (0, k_padded - w.shape[1])), scale

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, *, granularity: str = "per_row", reduce_range: bool = False,
        kernel: str | None = None,
    ) -> Int8WeightTensor:
        """Quantize a float ``[out, in]`` weight; ``kernel`` forces a kernel by name (for benchmarks)."""
        _check_weight(weight, cls.__name__)
        chosen = _chosen(cls.scheme, weight, kernel)
        qdata, scale = cls._quantize(weight, granularity, reduce_range, chosen.scale_dtype_for(weight.dtype))
        return cls(shape=tuple(weight.shape), dtype=weight.dtype, qdata=qdata, scale=scale,
                   granularity=granularity, reduce_range=reduce_range, kernel=chosen.name)

    def _scales_for(self, kernel: Kernel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {"scale": self.scale.to(kernel.scale_dtype_for(dtype))}

    def int_values(self) -> torch.Tensor:
        """The ``[out, in]`` int8 values."""
        return self.qdata[:, : self.shape[1]]

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``qdata * scale`` in float32, then ``dtype`` (default: the weight's)."""
        w = self.int_values().to(torch.float32) * self.scale.to(torch.float32)[:, None]
        return w.to(dtype or self.dtype)

    def _describe(self) -> str:
        bits = "int7" if self.reduce_range else "int8"
        return f"{bits} symmetric {self.granularity}, layout=plain"


class Int8DynamicWeightTensor(Int8WeightTensor):
    """An :class:`Int8WeightTensor` whose activations are quantized to int8 on every call.

    ``act_granularity`` is ``per_row`` (one scale per token) or ``per_tensor``;
    ``act_mapping`` is ``symmetric`` or ``asymmetric`` (then ``row_sum``, the int32 row
    sums of ``qdata``, corrects for the zero point).

    >>> import torch
    >>> q = Int8DynamicWeightTensor.from_float(torch.randn(16, 32))
    >>> q.act_granularity, q.act_mapping, q.act_quant_range
    ('per_row', 'symmetric', (-128, 127))
    """

    tensor_fields: ClassVar[tuple[str, ...]] = ("qdata", "scale", "row_sum")
    attribute_fields: ClassVar[tuple[str, ...]] = ("granularity", "reduce_range", "kernel", "act_granularity", "act_mapping")
    scheme: ClassVar[Scheme] = "int8_dynamic"
    row_sum: torch.Tensor
    act_granularity: str
    act_mapping: str

    @classmethod
    def from_float(  # type: ignore[override]
        cls, weight: torch.Tensor, *, granularity: str = "per_row", reduce_range: bool = False,
        act_granularity: str = "per_row", act_mapping: str = "symmetric", kernel: str | None = None,
    ) -> Int8DynamicWeightTensor:
        """Quantize a float ``[out, in]`` weight; ``kernel`` forces a kernel by name (for benchmarks)."""
        _check_weight(weight, cls.__name__)
        chosen = _chosen(cls.scheme, weight, kernel)
        qdata, scale = cls._quantize(weight, granularity, reduce_range, chosen.scale_dtype_for(weight.dtype))
        row_sum = qdata.to(torch.int32).sum(dim=1)
        return cls(shape=tuple(weight.shape), dtype=weight.dtype, qdata=qdata, scale=scale,
                   row_sum=row_sum, granularity=granularity, reduce_range=reduce_range,
                   kernel=chosen.name, act_granularity=act_granularity, act_mapping=act_mapping)

    @property
    def act_quant_range(self) -> tuple[int, int]:
        """The integer range of the activations (7-bit with ``reduce_range``)."""
        return resolve_quant_range(torch.int8, reduce_range=self.reduce_range)

    def _describe(self) -> str:
        return (f"{super()._describe()}, activations=int8 {self.act_mapping} {self.act_granularity} "
                "dynamic")


def _check_weight(weight: torch.Tensor, owner: str) -> None:
    if weight.dim() != 2 or weight.dtype not in _FLOAT_DTYPES:
        raise QuantizationConfigError(
            f"{owner}: expected a 2-D float weight ({', '.join(str(d) for d in _FLOAT_DTYPES)}), "
            f"got shape {tuple(weight.shape)} of dtype {weight.dtype}."
        )


def _chosen(scheme: Scheme, weight: torch.Tensor, kernel: str | None) -> Kernel:
    if kernel is None:
        return select_kernel(scheme, weight.device.type, weight.dtype)
    forced = kernel_by_name(kernel)
    if forced.scheme != scheme or weight.dtype not in forced.activation_dtypes or not forced.usable():
        raise UnsupportedOperationError(
            f"kernel {kernel!r} cannot run {scheme} for {weight.dtype} weights on this machine."
        )
    return forced


# torch.load(weights_only=True) rebuilds only allow-listed classes. Allowing our own
# weight classes changes nothing else (no torch or Inductor setting).
torch.serialization.add_safe_globals([Int4WeightTensor, Int8WeightTensor, Int8DynamicWeightTensor])
