"""ComposableQuantizer refuses a quantizer that rewrites an earlier one's annotations (torchao's rule)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.fx import GraphModule, Node

from observers import MinMaxObserver
from pt2e.errors import AnnotationConflictError
from pt2e.quantizer import (
    ComposableQuantizer,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    get_annotation,
)

SPEC = QuantizationSpec(dtype=torch.uint8, observer_or_fake_quant_ctr=MinMaxObserver)
OTHER = QuantizationSpec(dtype=torch.int8, observer_or_fake_quant_ctr=MinMaxObserver)


class Fn(Quantizer):
    """A quantizer that applies ``fn`` to the relu node."""

    def __init__(self, fn: Callable[[Node], None]):
        super().__init__()
        self.fn = fn

    def annotate(self, model: GraphModule) -> GraphModule:
        self.fn(next(n for n in model.graph.nodes if n.target == torch.ops.aten.relu.default))
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def _first(relu: Node) -> None:
    relu.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map={relu.args[0]: SPEC}, output_qspec=SPEC)


def _replace(relu: Node) -> None:
    relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=SPEC)


def _remove(relu: Node) -> None:
    del relu.meta["quantization_annotation"]


def _overwrite_edge(relu: Node) -> None:
    get_annotation(relu).input_qspec_map[relu.args[0]] = OTHER


def _drop_edge(relu: Node) -> None:
    get_annotation(relu).input_qspec_map.clear()


def _overwrite_output(relu: Node) -> None:
    get_annotation(relu).output_qspec = OTHER


def _gm() -> GraphModule:
    return torch.export.export(torch.nn.ReLU(), (torch.randn(2),)).module()


@pytest.mark.parametrize(("second", "says"), [
    (_replace, "replaced the annotation"),
    (_remove, "removed the annotation"),
    (_overwrite_edge, "overwrote the spec of input edge"),
    (_drop_edge, "removed the spec of input edge"),
    (_overwrite_output, "overwrote the output spec"),
], ids=["replace", "remove", "overwrite-edge", "drop-edge", "overwrite-output"])
def test_a_later_quantizer_changing_an_annotation_raises(second, says):
    with pytest.raises(AnnotationConflictError, match=says) as info:
        ComposableQuantizer([Fn(_first), Fn(second)]).annotate(_gm())
    assert isinstance(info.value, RuntimeError)  # torchao raises RuntimeError here
    assert "node 'relu'" in str(info.value) and "quantizer 2 of 2" in str(info.value)


def _add_edge(relu: Node) -> None:
    get_annotation(relu).input_qspec_map[relu.args[0]] = SPEC


def _annotate_input(relu: Node) -> None:
    relu.args[0].meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=SPEC)


def test_adding_an_edge_or_annotating_other_nodes_is_allowed():
    gm = _gm()
    ComposableQuantizer([Fn(_replace), Fn(_add_edge), Fn(_annotate_input)]).annotate(gm)
    relu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default)
    assert get_annotation(relu).input_qspec_map == {relu.args[0]: SPEC}
    assert get_annotation(relu.args[0]).output_qspec is SPEC


def test_each_annotate_call_starts_afresh():
    """Re-annotating the same graph (e.g. ``report`` on a copy, then ``prepare``) is not a conflict."""
    gm = _gm()
    q = ComposableQuantizer([Fn(_replace)])
    q.annotate(gm)
    q.annotate(gm)  # replaces its own annotation from the previous call
    assert get_annotation(next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default))
