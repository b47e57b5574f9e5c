"""Which CPU kernel runs a quantized linear, per (scheme, device, activation dtype): a table.

Every quantized weight records the name of the kernel chosen for it when it was
built (by :func:`select_kernel`, again after ``.to(dtype)`` and after loading); the
linear call then only looks the name up. The table (:data:`KERNELS`) is data:
each :class:`Kernel` says which activation dtypes it serves, the dtype the ATen op
really computes in, the dtype its weight scales are stored in, an explicit
``priority`` (lowest wins) and a ``usable`` probe that runs on *this* machine. The
figures behind the priorities are in ``docs/design.md`` and ``BENCHMARKS.md``; the
slower entries stay in the table so the benchmark can time them side by side.

The short version, measured single-threaded on a 4096x4096 linear at batch 1:
``aten._weight_int4pack_mm_for_cpu`` and ``aten._weight_int8pack_mm`` are fast
only with bfloat16 activations (fp32 and fp16 activations are 10-50x slower), so
fp32 and fp16 models run those kernels in bfloat16 and cast back;
``aten._int_mm`` is exact and fast only where oneDNN has VNNI, which is probed by
running it (without VNNI it saturates and returns wrong sums), and elsewhere the
int8 activations, exactly representable in bfloat16, go through
``_weight_int8pack_mm``.

>>> import torch
>>> select_kernel("int4_weight_only", "cpu", torch.float32).name
'int4_tinygemm_cpu_via_bf16'
>>> select_kernel("int4_weight_only", "cpu", torch.float32).compute_dtype
torch.bfloat16
>>> select_kernel("int4_weight_only", "cuda", torch.bfloat16)
Traceback (most recent call last):
...
pt2e.errors.UnsupportedOperationError: int4_weight_only has no kernel for activations of dtype torch.bfloat16 on device 'cuda'; kernels here: int4_tinygemm_cpu (cpu: torch.bfloat16), int4_tinygemm_cpu_via_bf16 (cpu: torch.float32, torch.float16), int4_tinygemm_cpu_native (cpu: torch.float32, torch.float16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from observers.errors import UnsupportedOperationError
from observers.qparams import qparams_from_min_max

if TYPE_CHECKING:
    from .tensors import Int4WeightTensor, Int8DynamicWeightTensor, Int8WeightTensor

__all__ = [
    "INT4_N_MULTIPLE",
    "INT8_K_MULTIPLE",
    "KERNELS",
    "Kernel",
    "Scheme",
    "cpu_capability",
    "int_mm_is_exact",
    "kernel_by_name",
    "quantize_activation",
    "select_kernel",
    "unpack_int4_cpu",
]

Scheme = Literal["int4_weight_only", "int8_weight_only", "int8_dynamic"]

aten = torch.ops.aten

# Layout facts of the ATen kernels (torch 2.13), found by running them:
# _convert_weight_to_int4pack_for_cpu refuses N % 16 != 0, so int4 weights are
# stored with their output rows zero-padded to a multiple of 16;
# _weight_int8pack_mm with bfloat16 activations on AVX-512 returns wrong values or
# crashes when K % 16 != 0, so int8 weights (and their activations) are zero-padded
# along K to a multiple of 16 on every machine.
INT4_N_MULTIPLE = 16
INT8_K_MULTIPLE = 16


def cpu_capability() -> str:
    """The vector ISA ATen's CPU kernels dispatch to here (``AVX512``, ``AVX2``, ``DEFAULT``, ...).

    It decides the int4 packed layout, so it is recorded in every int4 weight.
    ``ATEN_CPU_CAPABILITY=avx2`` lowers it for a whole process.

    >>> isinstance(cpu_capability(), str)
    True
    """
    return str(torch.backends.cpu.get_cpu_capability())


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` returns exact int32 sums on this machine (probed once, by running it).

    Without VNNI, oneDNN computes int8 x int8 through an instruction whose int16
    pair sums saturate: ``127 * 127`` rows then come back wrong by far more than
    rounding. The probe multiplies such rows and compares with int64 arithmetic.

    >>> isinstance(int_mm_is_exact(), bool)
    True
    """
    rows = [[127] * 64, [-128] * 64, [127, -128] * 32, [127, 127, -128, -128] * 16]
    a = torch.tensor(rows, dtype=torch.int8)
    b = torch.tensor(rows * 4, dtype=torch.int8)
    try:
        out = torch._int_mm(a, b.t())
    except RuntimeError:
        return False
    return bool(torch.equal(out.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64).t()))


def _always() -> bool:
    return True


RunFn = Callable[["Kernel", torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Kernel:
    """One way to run a quantized linear on a device.

    ``compute_dtype`` is the dtype the ATen op sees (``None``: the activation's
    own); ``scale_dtype`` the dtype the weight's scales are stored in for it
    (``None``: the activation's). ``run(kernel, x2d, weight, bias)`` takes a 2-D
    activation of one of ``activation_dtypes`` and returns the output in that dtype.

    >>> import torch
    >>> k = kernel_by_name("int8_weight_only_cpu_via_bf16")
    >>> k.op, k.compute_dtype, k.scale_dtype
    ('aten._weight_int8pack_mm', torch.bfloat16, torch.bfloat16)
    """

    name: str
    scheme: Scheme
    device: str
    activation_dtypes: tuple[torch.dtype, ...]
    compute_dtype: torch.dtype | None
    scale_dtype: torch.dtype | None
    op: str
    priority: int
    run: RunFn
    usable: Callable[[], bool] = _always
    why: str = ""

    def scale_dtype_for(self, activation_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the weight scales this kernel reads for activations of ``activation_dtype``."""
        return activation_dtype if self.scale_dtype is None else self.scale_dtype

    def compute_dtype_for(self, activation_dtype: torch.dtype) -> torch.dtype:
        """The dtype the op computes in for activations of ``activation_dtype``."""
        return activation_dtype if self.compute_dtype is None else self.compute_dtype


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


def _pad_k(x: torch.Tensor, k_padded: int) -> torch.Tensor:
    return x if x.shape[-1] == k_padded else F.pad(x, (0, k_padded - x.shape[-1]))


def _run_int4(kernel: Kernel, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    w4: Int4WeightTensor = w  # type: ignore[assignment]
    compute = kernel.compute_dtype_for(x.dtype)
    y = aten._weight_int4pack_mm_for_cpu(
        x.to(compute).contiguous(), w4.packed, w4.group_size, w4.scale_and_zero
    )
    n = w4.shape[0]
    if y.shape[-1] != n:
        y = y[:, :n]
    return _add_bias(y.to(x.dtype), bias)


def _run_int8_weight_only(
    kernel: Kernel, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    w8: Int8WeightTensor = w  # type: ignore[assignment]
    compute = kernel.compute_dtype_for(x.dtype)
    xc = _pad_k(x.to(compute), w8.qdata.shape[-1]).contiguous()
    y = aten._weight_int8pack_mm(xc, w8.qdata, w8.scale)
    return _add_bias(y.to(x.dtype), bias)


def quantize_activation(
    x: torch.Tensor, *, per_token: bool, symmetric: bool, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dynamic int8 quantization of a 2-D activation: ``(int8 values, fp32 scale [M,1] or [1,1], zero point)``.

    The scale and zero point come from :func:`observers.qparams.qparams_from_min_max`
    (per token: one per row); the zero point is ``None`` when symmetric (it is 0).

    >>> import torch
    >>> q, s, z = quantize_activation(torch.tensor([[1.0, -2.0], [0.5, 0.25]]), per_token=True,
    ...     symmetric=True, quant_min=-128, quant_max=127)
    >>> q.tolist(), z
    ([[64, -127], [127, 64]], None)
    """
    xf = x.float()
    if per_token:
        lo, hi = xf.amin(dim=-1), xf.amax(dim=-1)
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        lo, hi = xf.amin(), xf.amax()
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    scale, zero_point = qparams_from_min_max(
        lo, hi, qscheme=qscheme, dtype=torch.qint8, quant_min=quant_min, quant_max=quant_max
    )
    scale = scale.reshape(-1, 1)
    q = torch.round(xf / scale)
    if symmetric:
        return torch.clamp(q, quant_min, quant_max).to(torch.int8), scale, None
    zp = zero_point.reshape(-1, 1).to(torch.int32)
    return torch.clamp(q + zp, quant_min, quant_max).to(torch.int8), scale, zp


def _dynamic_inputs(
    x: torch.Tensor, w: Int8DynamicWeightTensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lo, hi = w.act_quant_range
    q, scale, zp = quantize_activation(
        x, per_token=w.act_granularity == "per_row", symmetric=w.act_mapping == "symmetric",
        quant_min=lo, quant_max=hi,
    )
    return _pad_k(q, w.qdata.shape[-1]), scale, zp


def _run_int8_dynamic_int_mm(
    kernel: Kernel, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    wd: Int8DynamicWeightTensor = w  # type: ignore[assignment]
    q, x_scale, zp = _dynamic_inputs(x, wd)
    acc = torch._int_mm(q.contiguous(), wd.qdata.t())
    if zp is not None:
        # (q - zp) @ W^T = q @ W^T - zp * rowsum(W)
        acc = acc - zp * wd.row_sum
    y = acc.to(torch.float32) * x_scale * wd.scale
    return _add_bias(y, bias).to(x.dtype)


def _run_int8_dynamic_via_bf16(
    kernel: Kernel, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    wd: Int8DynamicWeightTensor = w  # type: ignore[assignment]
    q, x_scale, zp = _dynamic_inputs(x, wd)
    # Integers in [-255, 255] are exact in bfloat16, so the kernel multiplies the
    # same integers _int_mm would; only its bfloat16 output is rounded.
    xi = q.to(torch.int32) - zp if zp is not None else q
    y = aten._weight_int8pack_mm(xi.to(torch.bfloat16).contiguous(), wd.qdata, wd.scale)
    y = y.to(torch.float32) * x_scale
    return _add_bias(y, bias).to(x.dtype)


_FLOATS = (torch.float32, torch.float16)
_VIA_BF16_WHY = (
    "the op is ~10-50x faster with bfloat16 activations; rounding them to bfloat16 "
    "(relative error <= 2**-9) is far below the int4/int8 weight error"
)

KERNELS: tuple[Kernel, ...] = (
    Kernel(name="int4_tinygemm_cpu", scheme="int4_weight_only", device="cpu",
           activation_dtypes=(torch.bfloat16,), compute_dtype=torch.bfloat16,
           scale_dtype=torch.bfloat16, op="aten._weight_int4pack_mm_for_cpu", priority=0,
           run=_run_int4, why="the op's fast path"),
    Kernel(name="int4_tinygemm_cpu_via_bf16", scheme="int4_weight_only", device="cpu",
           activation_dtypes=_FLOATS, compute_dtype=torch.bfloat16, scale_dtype=torch.bfloat16,
           op="aten._weight_int4pack_mm_for_cpu", priority=0, run=_run_int4, why=_VIA_BF16_WHY),
    Kernel(name="int4_tinygemm_cpu_native", scheme="int4_weight_only", device="cpu",
           activation_dtypes=_FLOATS, compute_dtype=None, scale_dtype=None,
           op="aten._weight_int4pack_mm_for_cpu", priority=10, run=_run_int4,
           why="the op in the activation's dtype: slower than fp32 dense; kept for the benchmark"),
    Kernel(name="int8_weight_only_cpu", scheme="int8_weight_only", device="cpu",
           activation_dtypes=(torch.bfloat16,), compute_dtype=torch.bfloat16,
           scale_dtype=torch.bfloat16, op="aten._weight_int8pack_mm", priority=0,
           run=_run_int8_weight_only, why="the op's fast path"),
    Kernel(name="int8_weight_only_cpu_via_bf16", scheme="int8_weight_only", device="cpu",
           activation_dtypes=_FLOATS, compute_dtype=torch.bfloat16, scale_dtype=torch.bfloat16,
           op="aten._weight_int8pack_mm", priority=0, run=_run_int8_weight_only,
           why=_VIA_BF16_WHY),
    Kernel(name="int8_weight_only_cpu_native", scheme="int8_weight_only", device="cpu",
           activation_dtypes=_FLOATS, compute_dtype=None, scale_dtype=None,
           op="aten._weight_int8pack_mm", priority=10, run=_run_int8_weight_only,
           why="the op in the activation's dtype: slower than fp32 dense; kept for the benchmark"),
    Kernel(name="int8_dynamic_cpu_int_mm", scheme="int8_dynamic", device="cpu",
           activation_dtypes=(torch.float32, torch.bfloat16, torch.float16),
           compute_dtype=torch.int8, scale_dtype=torch.float32, op="aten._int_mm", priority=0,
           run=_run_int8_dynamic_int_mm, usable=int_mm_is_exact,
           why="int8 x int8 -> int32 in oneDNN; only where the probe finds it exact (VNNI)"),
    Kernel(name="int8_dynamic_cpu_via_bf16", scheme="int8_dynamic", device="cpu",
           activation_dtypes=(torch.float32, torch.bfloat16, torch.float16),
           compute_dtype=torch.bfloat16, scale_dtype=torch.bfloat16,
           op="aten._weight_int8pack_mm", priority=5, run=_run_int8_dynamic_via_bf16,
           why="the int8 activations as exact bfloat16 integers; never saturates"),
)

_BY_NAME: dict[str, Kernel] = {k.name: k for k in KERNELS}


def kernel_by_name(name: str) -> Kernel:
    """The kernel called ``name`` (what a quantized weight records).

    >>> kernel_by_name("int8_dynamic_cpu_via_bf16").op
    'aten._weight_int8pack_mm'
    >>> kernel_by_name("nope")
    Traceback (most recent call last):
    ...
    pt2e.errors.UnsupportedOperationError: no kernel named 'nope'; known: int4_tinygemm_cpu, int4_tinygemm_cpu_via_bf16, int4_tinygemm_cpu_native, int8_weight_only_cpu, int8_weight_only_cpu_via_bf16, int8_weight_only_cpu_native, int8_dynamic_cpu_int_mm, int8_dynamic_cpu_via_bf16.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise UnsupportedOperationError(f"no kernel named {name!r}; known: {known}.") from None


def candidates(scheme: Scheme, device: str, dtype: torch.dtype) -> list[Kernel]:
    """Every usable kernel for ``(scheme, device, dtype)`` here, best first.

    >>> import torch
    >>> [k.name for k in candidates("int8_weight_only", "cpu", torch.float32)]
    ['int8_weight_only_cpu_via_bf16', 'int8_weight_only_cpu_native']
    """
    found = [k for k in KERNELS
             if k.scheme == scheme and k.device == device and dtype in k.activation_dtypes]
    return sorted((k for k in found if k.usable()), key=lambda k: k.priority)


def select_kernel(scheme: Scheme, device: str, dtype: torch.dtype) -> Kernel:
    """The kernel that runs ``scheme`` for activations of ``dtype`` on ``device`` here.

    Raises :class:`~pt2e.errors.UnsupportedOperationError` when none can: there is
    no fallback to float.

    >>> import torch
    >>> select_kernel("int8_dynamic", "cpu", torch.bfloat16).name in (
    ...     "int8_dynamic_cpu_int_mm", "int8_dynamic_cpu_via_bf16")
    True
    """
    found = candidates(scheme, device, dtype)
    if found:
        return found[0]
    known = ", ".join(
        f"{k.name} ({k.device}: {', '.join(str(d) for d in k.activation_dtypes)})"
        for k in KERNELS if k.scheme == scheme
    )
    raise UnsupportedOperationError(
        f"{scheme} has no kernel for activations of dtype {dtype} on device {device!r}; "
        f"kernels here: {known}."
    )


def unpack_int4_cpu(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The ``[n, k]`` int32 values (0..15) that ``_convert_weight_to_int4pack_for_cpu`` packed.

    The packed layout depends on the CPU capability and is not documented, so it
    is read by probing the packer on this machine: packing index digits, one
    4-bit digit at a time, tells where every value went. Exact, but it packs
    ``log16(n*k)`` probe tensors: meant for ``dequantize()`` and tests, not for a
    hot path.

    >>> import torch
    >>> q = torch.randint(0, 16, (16, 32), dtype=torch.int32)
    >>> packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    >>> torch.equal(unpack_int4_cpu(packed, 16, 32), q)
    True
    """
    count = n * k
    index = torch.arange(count, dtype=torch.int64).reshape(n, k)
    source_lo = torch.zeros(packed.shape, dtype=torch.int64)
    source_hi = torch.zeros(packed.shape, dtype=torch.int64)
    digits = max(1, (max(count - 1, 1).bit_length() + 3) // 4)
    for d in range(digits):
        digit = ((index >> (4 * d)) & 15).to(torch.int32)
        probe = aten._convert_weight_to_int4pack_for_cpu(digit, 1).to(torch.int64)
        source_lo |= (probe & 15) << (4 * d)
        source_hi |= (probe >> 4) << (4 * d)
    sources = torch.cat([source_lo.reshape(-1), source_hi.reshape(-1)])
    if sources.numel() != count or not torch.equal(
        torch.bincount(sources, minlength=count), torch.ones(count, dtype=torch.int64)
    ):
        raise UnsupportedOperationError(
            "unpack_int4_cpu: this torch's int4 CPU packing is not a permutation of 4-bit values; "
            "dequantize() cannot read it."
        )
    p = packed.to(torch.int64)
    values = torch.empty(count, dtype=torch.int64)
    values[sources] = torch.cat([(p & 15).reshape(-1), (p >> 4).reshape(-1)])
    return values.reshape(n, k).to(torch.int32)
