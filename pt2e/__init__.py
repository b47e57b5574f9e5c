"""pt2e: PyTorch 2 export graph quantization with pluggable backend quantizers.

Mirrors ``torchao.quantization.pt2e``: switch by changing imports.

>>> import pt2e
>>> callable(pt2e.prepare_pt2e) and callable(pt2e.convert_pt2e)
True
"""

from __future__ import annotations

from .calibration import calibrate
from .capture import capture_pre_autograd_graph
from .errors import (
    AnnotationError,
    ArgumentTypeError,
    ArgumentValueError,
    NotExportedModelError,
    ObserverStateError,
    PipelineStateError,
    Pt2eError,
    QuantizationConfigError,
    UnsupportedOperationError,
)
from .quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from .quantizer.export import WrapperModule
from .report import OpRecord, QuantizationReport, Report, quantization_report
from .train_eval import (
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)

__all__ = [
    "prepare_pt2e",
    "prepare_qat_pt2e",
    "convert_pt2e",
    "capture_pre_autograd_graph",
    "calibrate",
    "quantization_report",
    "QuantizationReport",
    "Report",
    "OpRecord",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "allow_exported_model_train_eval",
    "WrapperModule",
    "Pt2eError",
    "QuantizationConfigError",
    "ObserverStateError",
    "AnnotationError",
    "NotExportedModelError",
    "PipelineStateError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "UnsupportedOperationError",
]

# the numeric debugger (torchao-compatible names), per-layer accuracy and fallback
from .numeric_debugger import (  # noqa: E402
    CUSTOM_KEY,
    FROM_NODE_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    OutputLogger,
    bfs_trace_with_node_process,
    compare_results,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
)

__all__ += [
    "generate_numeric_debug_handle",
    "prepare_for_propagation_comparison",
    "extract_results_from_loggers",
    "compare_results",
    "OutputLogger",
    "CUSTOM_KEY",
    "NUMERIC_DEBUG_HANDLE_KEY",
    "FROM_NODE_KEY",
    "bfs_trace_with_node_process",
]

from .accuracy import AccuracyReport, LayerAccuracy, compare  # noqa: E402
from .fallback import (  # noqa: E402
    FallbackReport,
    FallbackResult,
    KeepFloatQuantizer,
    accuracy_aware_fallback,
)

__all__ += [
    "compare",
    "AccuracyReport",
    "LayerAccuracy",
    "accuracy_aware_fallback",
    "FallbackReport",
    "FallbackResult",
    "KeepFloatQuantizer",
]
