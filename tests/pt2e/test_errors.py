"""Bad input gets a clear error that names the node and says how to fix it."""

from __future__ import annotations

import pytest
import torch
from support.models import MLP, export
from support.reference_quantizer import ReferenceQuantizer
from torch import nn

from observers import MinMaxObserver
from pt2e import (
    AnnotationError,
    NotExportedModelError,
    ObserverStateError,
    PipelineStateError,
    convert_pt2e,
    prepare_pt2e,
)
from pt2e.quantizer import (
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
    annotate_input_qspec_map,
    annotate_output_qspec,
    mark_annotated,
)

X = torch.randn(2, 16)


def test_plain_module_is_rejected_with_a_fix():
    with pytest.raises(NotExportedModelError, match=r"torch\.export\.export\(model"):
        prepare_pt2e(MLP(), ReferenceQuantizer())


def test_exported_program_is_rejected_with_a_fix():
    ep = torch.export.export(MLP(), (X,))
    with pytest.raises(NotExportedModelError, match=r"\.module\(\)"):
        prepare_pt2e(ep, ReferenceQuantizer())


class _Lambda(Quantizer):
    def __init__(self, fn):
        self.fn = fn

    def annotate(self, model):
        self.fn(model)
        return model

    def validate(self, model):
        pass


def _spec(dtype=torch.uint8, lo=0, hi=255):
    return QuantizationSpec(dtype=dtype, quant_min=lo, quant_max=hi,
                            qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=MinMaxObserver)


def test_annotation_of_a_non_input_names_both_nodes():
    def bad(model):
        nodes = [n for n in model.graph.nodes if n.op == "call_function"]
        annotate_input_qspec_map(nodes[-1], nodes[0], _spec())  # not an input of the last

    with pytest.raises(AnnotationError, match=r"input 'linear' of node 'linear_1'.*not an input of that node"):
        prepare_pt2e(export(MLP(), X), _Lambda(bad))


def test_conflicting_specs_on_one_edge_are_reported():
    def bad(model):
        lin = next(n for n in model.graph.nodes if n.op == "call_function")
        annotate_input_qspec_map(lin, lin.args[0], _spec())
        mark_annotated([lin])
        annotate_input_qspec_map(lin, lin.args[0], _spec(torch.int8, -128, 127))

    with pytest.raises(AnnotationError, match=r"conflicting specs on the input edge 'x' of node 'linear'"):
        prepare_pt2e(export(MLP(), X), _Lambda(bad))


def test_sharing_with_an_unannotated_edge_is_reported():
    def bad(model):
        lin, relu = [n for n in model.graph.nodes if n.op == "call_function"][:2]
        annotate_output_qspec(relu, SharedQuantizationSpec((lin.args[0], lin)))

    with pytest.raises(AnnotationError, match=r"has no quantization spec"):
        prepare_pt2e(export(MLP(), X), _Lambda(bad))


def test_convert_before_calibration_names_the_observer():
    prepared = prepare_pt2e(export(MLP(), X), ReferenceQuantizer())
    with pytest.raises(ObserverStateError, match=r"seen no data.*Run calibration"):
        convert_pt2e(prepared)


def test_second_prepare_is_refused():
    prepared = prepare_pt2e(export(MLP(), X), ReferenceQuantizer())
    with pytest.raises(PipelineStateError, match="already prepared"):
        prepare_pt2e(prepared, ReferenceQuantizer())


def test_convert_of_unprepared_model_is_refused():
    with pytest.raises(PipelineStateError, match="has no observers"):
        convert_pt2e(export(MLP(), X))


def test_convert_argument_types_are_checked():
    prepared = prepare_pt2e(export(MLP(), X), ReferenceQuantizer())
    with pytest.raises(TypeError, match="use_reference_representation"):
        convert_pt2e(prepared, "yes")


def test_train_on_prepared_model_points_to_helpers():
    prepared = prepare_pt2e(export(nn.Sequential(nn.Linear(16, 4), nn.Dropout()), X),
                            ReferenceQuantizer())
    with pytest.raises(PipelineStateError, match="move_exported_model_to_train"):
        prepared.train()
