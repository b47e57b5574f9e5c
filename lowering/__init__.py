"""Turn converted (q/dq) graphs into fast backend code, and check the int8 kernels ran.

>>> from lowering import compile_x86, lower_pt2e_quantized_to_x86
"""

from __future__ import annotations

from .x86_inductor import (
    KernelReport,
    X86CompiledModel,
    compile_x86,
    kernel_report,
    lower_pt2e_quantized_to_x86,
)

__all__ = [
    "lower_pt2e_quantized_to_x86",
    "compile_x86",
    "X86CompiledModel",
    "KernelReport",
    "kernel_report",
]

from .executorch import (  # noqa: E402
    DelegationReport,
    ExecuTorchProgram,
    OutsideNode,
    to_executorch,
)
from .executorch_checks import XnnpackLoweringError, check_xnnpack_graph  # noqa: E402
from .executorch_runtime import ExecuTorchLoadError, ExecuTorchRunner  # noqa: E402

__all__ += [
    "to_executorch",
    "ExecuTorchProgram",
    "DelegationReport",
    "OutsideNode",
    "ExecuTorchRunner",
    "ExecuTorchLoadError",
    "XnnpackLoweringError",
    "check_xnnpack_graph",
]
