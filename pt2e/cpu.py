"""What this CPU can do, read in one place.

>>> isinstance(cpu_has_vnni(), bool)
True
"""

from __future__ import annotations

import platform

import torch

__all__ = ["cpu_has_vnni", "cpu_model"]


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
