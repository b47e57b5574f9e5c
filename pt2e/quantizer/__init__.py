"""The contract backend quantizers are written against (mirrors ``torchao.quantization.pt2e.quantizer``)."""

from __future__ import annotations

from .annotation import (
    Q_ANNOTATION_KEY,
    annotate_input_qspec_map,
    annotate_output_qspec,
    any_annotated,
    get_annotation,
    is_annotated,
    is_valid_annotation,
    mark_annotated,
)
from .base import Quantizer
from .composable import ComposableQuantizer
from .config import (
    OperatorConfig,
    OperatorPatternType,
    QuantizationConfig,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
)
from .export import WrapperModule, model_is_exported
from .filters import (
    get_module_name_filter,
    get_module_type_filter,
    get_not_module_type_or_name_filter,
    module_stack,
)
from .passes import DuplicateDQPass, PortNodeMetaForQDQ
from .spec import (
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

__all__ = [
    "Quantizer",
    "ComposableQuantizer",
    "EdgeOrNode",
    "QuantizationSpec",
    "QuantizationSpecBase",
    "DerivedQuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "OperatorConfig",
    "OperatorPatternType",
    "Q_ANNOTATION_KEY",
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "mark_annotated",
    "is_annotated",
    "any_annotated",
    "get_annotation",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "get_module_name_filter",
    "get_module_type_filter",
    "get_not_module_type_or_name_filter",
    "module_stack",
    # helpers quantizer authors import from torchao
    "is_valid_annotation",
    "DuplicateDQPass",
    "PortNodeMetaForQDQ",
    "WrapperModule",
    "model_is_exported",
]
