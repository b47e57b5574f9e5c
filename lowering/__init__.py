"""Turn converted (q/dq) graphs into fast backend code, and check the int8 kernels ran.

Every lowering follows one contract (:mod:`lowering.contract`): converted graph +
example inputs -> a callable :class:`Lowered` whose ``report`` says what ran in
int8 and what stayed float. :mod:`lowering.backends` maps backend names to their
quantizer, default config, lower function and check.

>>> from lowering import compile_x86, get_backend, lower_pt2e_quantized_to_x86
>>> get_backend("x86_inductor").lower_function
'lowering.x86_inductor:compile_x86'
"""

from __future__ import annotations

from .backends import (
    Backend,
    BackendImportError,
    DuplicateBackendError,
    UnknownBackendError,
    get_backend,
    list_backends,
    register_backend,
)
from .contract import (
    CheckFunction,
    KernelFamily,
    Lowered,
    LowerFunction,
    LoweringError,
    NotLoweredYetError,
    check_int8,
)
from .executorch import (
    DelegationReport,
    ExecuTorchProgram,
    OutsideNode,
    check_xnnpack_int8,
    to_executorch,
)
from .executorch_checks import XnnpackLoweringError, check_xnnpack_graph
from .executorch_runtime import ExecuTorchLoadError, ExecuTorchRunner
from .x86_checks import X86LoweringError, check_x86_graph
from .x86_inductor import (
    KernelReport,
    X86CompiledModel,
    check_x86_int8,
    compile_x86,
    kernel_report,
    lower_pt2e_quantized_to_x86,
)

__all__ = [
    # the contract and the registry
    "Lowered",
    "LowerFunction",
    "CheckFunction",
    "KernelFamily",
    "check_int8",
    "Backend",
    "get_backend",
    "list_backends",
    "register_backend",
    "LoweringError",
    "NotLoweredYetError",
    "UnknownBackendError",
    "DuplicateBackendError",
    "BackendImportError",
    # Inductor (x86)
    "lower_pt2e_quantized_to_x86",
    "compile_x86",
    "X86CompiledModel",
    "X86LoweringError",
    "check_x86_graph",
    "KernelReport",
    "kernel_report",
    "check_x86_int8",
    # ExecuTorch (XNNPACK)
    "to_executorch",
    "ExecuTorchProgram",
    "DelegationReport",
    "OutsideNode",
    "check_xnnpack_int8",
    "ExecuTorchRunner",
    "ExecuTorchLoadError",
    "XnnpackLoweringError",
    "check_xnnpack_graph",
]

# ONNX QDQ export, run by onnxruntime (imports neither until called)
from .onnx import (  # noqa: E402
    OnnxExportError,
    OnnxModel,
    check_onnx_int8,
    export_onnx,
)
from .onnx_checks import check_onnx_graph, onnxruntime_report  # noqa: E402

__all__ += [
    "export_onnx",
    "OnnxModel",
    "check_onnx_int8",
    "OnnxExportError",
    "check_onnx_graph",
    "onnxruntime_report",
]

from .openvino import (  # noqa: E402
    OpenVINOLayer,
    OpenVINOLoweringError,
    OpenVINOModel,
    OpenVINOReport,
    check_openvino_int8,
    expand_folded_weights,
    runtime_report,
    to_openvino,
)

__all__ += [
    "to_openvino",
    "OpenVINOModel",
    "OpenVINOReport",
    "OpenVINOLayer",
    "OpenVINOLoweringError",
    "check_openvino_int8",
    "runtime_report",
    "expand_folded_weights",
]
