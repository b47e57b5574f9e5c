"""The shared quantizer engine: a toy backend in a few lines, precedence, propagation, reports."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.models import export
from support.numerics import op_sequence
from torch import nn

# --------------------------------------------------------------------------- a toy backend
# Begin toy backend: a table with two patterns and a config builder (kept under 60 lines).
from observers import MinMaxObserver, PerChannelMinMaxObserver  # noqa: E402
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.quantizer import QuantizationConfig, QuantizationSpec, get_annotation, is_annotated  # noqa: E402
from quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    XPUInductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from quantizers.annotators import annotate_shared_qparams_op, annotate_weighted_pattern  # noqa: E402
from quantizers.engine import TableQuantizer, is_dynamic_config
from quantizers.patterns import LINEAR_OPS, RELU_OPS, PatternTable, Step  # noqa: E402

TOY_PATTERNS = PatternTable()


@TOY_PATTERNS.register(name="linear_relu", anchor=LINEAR_OPS, priority=2,
                       chain=(Step(role="unary", ops=RELU_OPS),))
def _linear_relu(match, config, ctx):
    annotate_weighted_pattern(match, config, ctx, quantize_binary_input=False)


@TOY_PATTERNS.register(name="flatten", anchor=frozenset({torch.ops.aten.flatten.using_ints}), priority=1)
def _flatten(match, config, ctx):
    annotate_shared_qparams_op(match.anchor, config, ctx)


def toy_config() -> QuantizationConfig:
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                           qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, ch_axis=0,
                              qscheme=torch.per_channel_symmetric,
                              observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    return QuantizationConfig(act, act, weight, None)


class ToyQuantizer(TableQuantizer):
    patterns = TOY_PATTERNS

    def set_global(self, config):
        return self._set_global(config)

    def set_module_name(self, name, config):
        return self._set_module_name(name, config, "set_module_name")
# End toy backend.


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.flatten(torch.relu(self.fc1(x)), 1)
        return self.fc3(torch.relu(self.fc2(y)))


def test_toy_backend_is_short():
    import pathlib

    text = pathlib.Path(__file__).read_text()
    body = text[text.index("# Begin toy backend"):text.index("# End toy backend")]
    assert len(body.splitlines()) < 60


def test_toy_backend_runs_through_prepare_and_convert():
    x = torch.randn(2, 8)
    prepared = prepare_pt2e(export(_Toy(), x), ToyQuantizer().set_global(toy_config()))
    prepared(x)
    converted = convert_pt2e(prepared)
    assert op_sequence(converted) == [
        "dequantize_per_channel.default", "dequantize_per_channel.default",  # fc1, fc2 int8 weights
        "quantize_per_tensor.default", "dequantize_per_tensor.default",     # fc1 input
        "linear.default", "relu.default",
        "quantize_per_tensor.default", "dequantize_per_tensor.default",     # flatten in int8
        "flatten.using_ints",
        "quantize_per_tensor.default", "dequantize_per_tensor.default",     # shared qparams
        "linear.default", "relu.default",
        "linear.default",                                                    # fc3 has no relu: float
    ]
    q_args = [n.args[1:3] for n in converted.graph.nodes
              if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
    assert q_args[1] == q_args[2]  # flatten's input and output carry one scale / zero point
    report = ToyQuantizer().set_global(toy_config()).report(export(_Toy(), x))
    assert str(report).splitlines() == [
        "ToyQuantizer: 1 compute op(s) stay float",
        "  linear_2 (aten.linear.default in 'fc3'): no quantization pattern for this operator",
    ]


def test_module_name_beats_global_and_none_keeps_float():
    gm = export(_Toy(), torch.randn(2, 8))
    table = TOY_PATTERNS.derive(lambda row: dataclasses.replace(row, chain=()))  # plain linear rows
    q = ToyQuantizer().set_global(toy_config()).set_module_name("fc2", None)
    q.patterns = table
    q.annotate(gm)
    linears = [n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert [bool(get_annotation(n) and get_annotation(n).input_qspec_map) for n in linears] == \
        [True, False, True]
    # declined by the None config: the global stage skipped it, yet it stays free for a later quantizer
    assert not is_annotated(linears[1])
    assert "excluded by a None quantization config" in str(q.report())


def test_a_none_global_config_leaves_everything_untouched():
    gm = export(_Toy(), torch.randn(2, 8))
    q = ToyQuantizer().set_global(None)
    q.annotate(gm)
    assert not any(is_annotated(n) for n in gm.graph.nodes)
    assert {op.reason for op in q.unquantized_ops} == {"no quantization pattern for this operator"}


def test_stage_order_is_the_stated_precedence():
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_operator_type(torch.ops.aten.linear.default, None)
    q.set_module_type(nn.Linear, None)
    q.set_module_name("fc", None)
    assert [s.name.split(" ")[0] for s in q.stages()] == ["module", "module", "operator", "global"]
    assert [s.name for s in q.stages()][:2] == ["module name 'fc'", f"module type {nn.Linear!r}"]


def test_a_table_can_be_replaced_per_instance():
    """``patterns`` is read from the quantizer, not a module global: an instance can swap it."""
    gm = export(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(1, 4))
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.patterns = q.patterns.derive(lambda row: None if "linear" in row.name else row)
    q.annotate(gm)
    assert not any(is_annotated(n) for n in gm.graph.nodes)
    assert [op.op for op in q.unquantized_ops] == ["aten.linear.default"]


def test_xpu_is_a_derived_table_not_a_copy():
    x86_rows = {p.name: p for p in X86InductorQuantizer.patterns}
    for row in XPUInductorQuantizer.patterns:
        x86 = x86_rows[row.name]
        assert row.annotator is x86.annotator and row.priority == x86.priority
        assert dataclasses.replace(x86, anchor=row.anchor, chain=row.chain) == row


@pytest.mark.parametrize("quantizer", [X86InductorQuantizer, XNNPACKQuantizer], ids=["x86", "xnnpack"])
def test_every_row_uses_keyword_fields_and_unique_names(quantizer):
    names = [p.name for p in quantizer.patterns]
    assert len(names) == len(set(names))
    assert all(p.priority is not None and p.anchor for p in quantizer.patterns)


def test_is_dynamic_config_is_the_one_definition():
    import quantizers.x86_inductor as x86
    import quantizers.xnnpack as xnn
    import quantizers.xnnpack_annotators as xnn_ann

    for module in (x86, xnn, xnn_ann):
        assert not hasattr(module, "_is_dynamic")
    assert is_dynamic_config(get_default_x86_inductor_quantization_config(is_dynamic=True))
