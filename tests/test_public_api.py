"""The public surface is deliberate, torchao-compatible, and torchao-free."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

import pt2e
import pt2e.quantizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


# Every package's public surface, exactly: a name added or removed shows up here, on purpose.
PUBLIC: dict[str, list[str]] = {
    "pt2e": [
        "prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e", "capture_pre_autograd_graph",
        "calibrate", "sync_observers", "quantization_report", "QuantizationReport", "Report", "OpRecord",
        "move_exported_model_to_eval", "move_exported_model_to_train",
        "allow_exported_model_train_eval", "Pt2eError", "QuantizationConfigError",
        "ObserverStateError", "AnnotationError", "NotExportedModelError", "PipelineStateError",
        "ArgumentTypeError", "ArgumentValueError", "UnsupportedOperationError",
        "generate_numeric_debug_handle", "prepare_for_propagation_comparison",
        "extract_results_from_loggers", "compare_results", "OutputLogger", "CUSTOM_KEY",
        "NUMERIC_DEBUG_HANDLE_KEY", "FROM_NODE_KEY", "bfs_trace_with_node_process",
        "compare", "AccuracyReport", "LayerAccuracy", "accuracy_aware_fallback",
        "FallbackReport", "FallbackResult", "KeepFloatQuantizer", "WrapperModule",
        "AffineQuantizedObserverBase", "Granularity", "MappingType", "PerAxis", "PerBlock",
        "PerGroup", "PerRow", "PerTensor", "PerToken", "TorchAODType", "ZeroPointDomain",
        "get_block_size",
        "find_sequential_partitions", "get_equivalent_types", "update_equivalent_types_dict",
        "reference_representation_rewrite",
        "SmoothQuant", "BiasCorrection", "GPTQ", "CrossLayerEqualization", "ActivationRangeMargin",
        "choose_margin", "MarginChoice", "quantize_with_recipe",
        "RecipeReport", "RecipeResult",
    ],
    "pt2e.errors": [
        "Pt2eError", "QuantizationConfigError", "ObserverStateError", "AnnotationError",
        "NotExportedModelError", "PipelineStateError", "ArgumentTypeError", "ArgumentValueError",
        "UnsupportedOperationError", "ExportedTrainEvalError", "AnnotationConflictError",
    ],
    "pt2e.quantizer": [
        "Quantizer", "ComposableQuantizer", "EdgeOrNode", "QuantizationSpec", "QuantizationSpecBase",
        "DerivedQuantizationSpec", "FixedQParamsQuantizationSpec", "SharedQuantizationSpec",
        "QuantizationAnnotation", "QuantizationConfig", "OperatorConfig", "OperatorPatternType",
        "Q_ANNOTATION_KEY", "annotate_input_qspec_map", "annotate_output_qspec", "mark_annotated",
        "is_annotated", "any_annotated", "get_annotation", "get_input_act_qspec",
        "get_output_act_qspec", "get_weight_qspec", "get_bias_qspec", "get_module_name_filter",
        "get_module_type_filter", "get_not_module_type_or_name_filter", "module_stack",
        "is_valid_annotation", "DuplicateDQPass", "PortNodeMetaForQDQ", "WrapperModule",
        "model_is_exported",
    ],
    "quantizers": [
        "X86InductorQuantizer", "get_default_x86_inductor_quantization_config",
        "x86_needs_reduce_range", "XNNPACKQuantizer", "XnnpackSkipWarning",
        "get_symmetric_quantization_config", "XPUInductorQuantizer",
        "get_default_xpu_inductor_quantization_config",
        "quantize_", "Int4WeightOnlyConfig", "Int8WeightOnlyConfig",
        "Int8DynamicActivationInt8WeightConfig",
        "OpenVINOQuantizer", "QuantizationMode", "get_openvino_quantization_config",
        "get_x86_inductor_linear_dynamic_fp16_config", "EmbeddingQuantizer",
        "get_embedding_operators_config",
    ],
    "quantizers.eager": [
        "quantize_", "register_quantize_module_handler", "Int4WeightOnlyConfig",
        "Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig", "MappingType", "PerRow",
        "PerTensor", "PerGroup", "Int4PackingFormat", "Int4ChooseQParamsAlgorithm",
        "QuantizedLinearWeight", "Int4WeightTensor", "Int8WeightTensor", "Int8DynamicWeightTensor",
        "Kernel", "KERNELS", "select_kernel",
    ],
    "lowering": [
        "Lowered", "LowerFunction", "CheckFunction", "KernelFamily", "check_int8",
        "Backend", "get_backend", "list_backends", "register_backend",
        "LoweringError", "NotLoweredYetError", "UnknownBackendError", "DuplicateBackendError",
        "BackendImportError",
        "lower_pt2e_quantized_to_x86", "compile_x86", "X86CompiledModel", "KernelReport",
        "kernel_report", "check_x86_int8", "X86LoweringError", "check_x86_graph",
        "to_executorch", "ExecuTorchProgram", "DelegationReport", "OutsideNode",
        "check_xnnpack_int8", "ExecuTorchRunner", "ExecuTorchLoadError", "XnnpackLoweringError",
        "check_xnnpack_graph",
        "export_onnx", "OnnxModel", "check_onnx_int8", "OnnxExportError", "check_onnx_graph",
        "onnxruntime_report",
        "to_openvino", "OpenVINOModel", "OpenVINOReport", "OpenVINOLayer", "OpenVINOLoweringError",
        "check_openvino_int8", "runtime_report", "expand_folded_weights",
    ],
    "pt2e.distributed": ["MergeRule", "merge_rule_for", "register_merge_rule", "sync_observers"],
    "observers": [
        "DerivedObserverOrFakeQuantize", "FakeQuantize", "FakeQuantizeBase",
        "FixedQParamsFakeQuantize", "FixedQParamsObserver", "FusedMovingAvgObsFakeQuantize",
        "HistogramObserver", "LearnableFakeQuantize", "MinMaxObserver", "MSEObserver",
        "PercentileObserver",
        "MovingAverageMinMaxObserver", "MovingAveragePerChannelMinMaxObserver", "NoopObserver",
        "ObserverBase", "ObserverOrFakeQuantize", "ObserverOrFakeQuantizeConstructor",
        "ObserverStateError", "PartialWrapper", "PerChannelMinMaxObserver", "PlaceholderObserver",
        "Pt2eError", "QuantizationConfigError", "RecordingObserver", "ReuseInputObserver",
        "UniformQuantizationObserverBase", "default_affine_fixed_qparams_fake_quant",
        "default_affine_fixed_qparams_observer", "default_debug_observer",
        "default_dynamic_fake_quant", "default_dynamic_quant_observer",
        "default_embedding_fake_quant", "default_embedding_fake_quant_4bit", "default_fake_quant",
        "default_fixed_qparams_range_0to1_fake_quant", "default_fixed_qparams_range_0to1_observer",
        "default_fixed_qparams_range_neg1to1_fake_quant",
        "default_fixed_qparams_range_neg1to1_observer", "default_float_qparams_observer",
        "default_float_qparams_observer_4bit", "default_fused_act_fake_quant",
        "default_fused_per_channel_wt_fake_quant", "default_fused_wt_fake_quant",
        "default_histogram_fake_quant", "default_histogram_observer", "default_observer",
        "default_per_channel_weight_fake_quant", "default_per_channel_weight_observer",
        "default_placeholder_observer", "default_quant_range", "default_reuse_input_observer",
        "default_symmetric_fixed_qparams_fake_quant", "default_symmetric_fixed_qparams_observer",
        "default_weight_fake_quant", "default_weight_observer", "disable_fake_quant",
        "disable_observer", "disable_range_learning", "enable_fake_quant", "enable_observer",
        "enable_range_learning", "fused_per_channel_wt_fake_quant_range_neg_127_to_127",
        "fused_wt_fake_quant_range_neg_127_to_127", "is_float_qparams", "is_per_channel",
        "is_per_tensor", "is_symmetric", "per_channel_weight_observer_range_neg_127_to_127",
        "qparams_from_min_max", "resolve_quant_range", "weight_observer_range_neg_127_to_127",
        "AffineFakeQuantize", "AffineQuantizedMinMaxObserver",
        "AffineQuantizedMovingAverageMinMaxObserver", "AffineQuantizedObserverBase",
        "AffineQuantizedPlaceholderObserver", "Granularity", "MappingType", "PerAxis", "PerBlock",
        "PerGroup", "PerRow", "PerTensor", "PerToken", "TorchAODType", "ZeroPointDomain",
        "default_affine_fake_quant", "default_affine_per_axis_fake_quant",
        "default_groupwise_fake_quant", "get_block_size",
    ],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_every_package_all_is_pinned(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC[package])
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_quantizer_contract_covers_torchao_names():
    ao = pytest.importorskip("torchao.quantization.pt2e.quantizer")
    # passes we run inside convert rather than export as classes
    internal = {"DuplicateDQPass", "PortNodeMetaForQDQ", "is_valid_annotation"}
    missing = set(ao.__all__) - internal - set(pt2e.quantizer.__all__)
    assert not missing


@pytest.mark.parametrize("name", ["prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e"])
def test_entry_point_signatures_match_torchao(name):
    ao = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    ours = inspect.signature(getattr(pt2e, name)).parameters
    theirs = inspect.signature(getattr(ao, name)).parameters
    assert [(p.name, p.default) for p in ours.values()] == \
        [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize("cls", ["QuantizationSpec", "FixedQParamsQuantizationSpec",
                                 "SharedQuantizationSpec", "DerivedQuantizationSpec",
                                 "QuantizationAnnotation", "QuantizationConfig"])
def test_spec_fields_match_torchao(cls):
    import dataclasses

    ao = pytest.importorskip("torchao.quantization.pt2e.quantizer")
    ours = [(f.name, f.default) for f in dataclasses.fields(getattr(pt2e.quantizer, cls))]
    theirs = [(f.name, f.default) for f in dataclasses.fields(getattr(ao, cls))]
    assert ours == theirs


_FORBIDDEN = re.compile(
    r"^\s*(from|import)\s+(torchao\b|torch\.ao\.quantization(?!\.fx\._decomposed\b))", re.M)


@pytest.mark.parametrize("package", ["pt2e", "observers", "quantizers", "lowering"])
def test_packages_do_not_import_torchao(package):
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
        if _FORBIDDEN.search(p.read_text())
    ]
    assert offenders == []
