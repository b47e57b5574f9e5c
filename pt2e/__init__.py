"""pt2e: PyTorch 2 export graph quantization with pluggable backend quantizers.

Mirrors ``torchao.quantization.pt2e``: switch by changing imports.

>>> import pt2e
>>> callable(pt2e.prepare_pt2e) and callable(pt2e.convert_pt2e)
True
"""

from __future__ import annotations

from .calibration import calibrate
from .capture import capture_pre_autograd_graph
from .distributed import sync_observers
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
    "sync_observers",
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

# the affine / granularity family, re-exported where torchao.quantization.pt2e has it
from observers.affine import AffineQuantizedObserverBase  # noqa: E402
from observers.granularity import (  # noqa: E402
    Granularity,
    MappingType,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    TorchAODType,
    ZeroPointDomain,
    get_block_size,
)

from . import affine_ops as _affine_ops  # noqa: E402,F401  (registers torch.ops.pt2e.*)

__all__ += [
    "AffineQuantizedObserverBase",
    "Granularity",
    "MappingType",
    "PerAxis",
    "PerBlock",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "PerToken",
    "TorchAODType",
    "ZeroPointDomain",
    "get_block_size",
]

# torchao's graph utilities (torchao.quantization.pt2e.graph_utils)
from .partitions import (  # noqa: E402
    find_sequential_partitions,
    get_equivalent_types,
    update_equivalent_types_dict,
)
from .reference_representation import reference_representation_rewrite  # noqa: E402

__all__ += [
    "find_sequential_partitions",
    "get_equivalent_types",
    "update_equivalent_types_dict",
    "reference_representation_rewrite",
]

# post-training algorithms (issue 15) and the one-call recipe: see docs/algorithms.md
from .bias_correction import BiasCorrection  # noqa: E402
from .equalization import CrossLayerEqualization  # noqa: E402
from .gptq import GPTQ  # noqa: E402
from .range_margin import ActivationRangeMargin, MarginChoice, choose_margin  # noqa: E402
from .recipe import RecipeReport, RecipeResult, quantize_with_recipe  # noqa: E402
from .smoothing import SmoothQuant  # noqa: E402

__all__ += [
    "SmoothQuant",
    "BiasCorrection",
    "GPTQ",
    "CrossLayerEqualization",
    "ActivationRangeMargin",
    "choose_margin",
    "MarginChoice",
    "quantize_with_recipe",
    "RecipeReport",
    "RecipeResult",
]
