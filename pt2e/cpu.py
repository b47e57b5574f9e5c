"""What this CPU can do, read in one place.

>>> isinstance(cpu_has_vnni(), bool), isinstance(cpu_has_bf16(), bool)
(True, True)
"""

from __future__ import annotations

import platform

import torch

__all__ = ["cpu_has_vnni", "cpu_has_bf16", "cpu_model"]


def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (or AVX-VNNI), which oneDNN's u8*s8 int8 kernels need
    to avoid saturating activations above 127.

    Read from ``torch.cpu._is_vnni_supported``; a torch without that probe is assumed
    to have VNNI (the x86 quantizer's default, full-range uint8 activations).

    >>> cpu_has_vnni() == bool(torch.cpu._is_vnni_supported())
    True
    """
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(is_vnni()) if is_vnni is not None else True


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), which
    int8-mixed-bf16 lowering (``compile_x86(..., mixed_bf16=True)``) needs to be fast.

    Read from ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``;
    a torch without those probes is assumed to have no bf16 support (bf16 then runs
    emulated in fp32 and is slower than fp32).

    >>> cpu_has_bf16() == bool(torch.cpu._is_avx512_bf16_supported()
    ...                        or torch.cpu._is_amx_tile_supported())
    True
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(probe()) for name in probes if (probe := getattr(torch.cpu, name, None)) is not None)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it), for figures to name.

    >>> isinstance(cpu_model(), str) and bool(cpu_model())
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
