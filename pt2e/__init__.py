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
