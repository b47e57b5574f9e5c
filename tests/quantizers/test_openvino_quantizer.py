"""OpenVINOQuantizer: annotation structure per mode, the post-ReLU range, LayerNorm, ignored scope.

Lowering (what OpenVINO really runs) is in tests/lowering/test_openvino_lowering.py;
the comparison with the NNCF-based reference runs in a subprocess there (importing it
imports torchao, which patches Inductor).
"""

from __future__ import annotations

import pytest
import support.x86_models as M
import torch
from support.numerics import sqnr

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import ArgumentTypeError, ArgumentValueError, QuantizationConfigError
from pt2e.ops import QD
from pt2e.quantizer import get_annotation, is_annotated
from quantizers import OpenVINOQuantizer, QuantizationMode

aten = torch.ops.aten
STATIC = ["int8_sym", "int8_mixed", "int8_transformer"]
WEIGHT_ONLY = ["int8wo_sym", "int8wo_asym", "int4wo_sym", "int4wo_asym"]
MODELS = ["SmallCNN", "MLP", "TransformerBlock"]
MIN_SQNR_DB = 30.0  # converted graph run in PyTorch vs float, int8 modes
MIN_SQNR_INT4_DB = 15.0  # 4-bit per-channel weights on these tiny layers


def converted(name: str, quantizer, *, fold: bool = False):
    model, args = getattr(M, name)().eval(), M.example_inputs(name)
    prepared = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    prepared(*args)
    return model, convert_pt2e(prepared, fold_quantize=fold), args


def annotated(name: str, mode: str):
    model, args = getattr(M, name)().eval(), M.example_inputs(name)
    gm = torch.export.export(model, args).module()
    return OpenVINOQuantizer(mode=mode).annotate(gm)


def quantizes(node) -> list:
    """The quantize ops reading ``node`` (directly)."""
    return [u for u in node.users if u.target == QD.quantize_per_tensor.default]


def weighted(gm):
    return [n for n in gm.graph.nodes if n.target in (aten.conv2d.default, aten.linear.default)]


# --- modes and their specs -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", STATIC)
@pytest.mark.parametrize("name", MODELS)
def test_every_conv_linear_has_int8_per_channel_weights_and_quantized_input(name, mode):
    gm = annotated(name, mode)
    convs = [n for n in weighted(gm) if n.target == aten.conv2d.default]
    for node in weighted(gm):
        qmap = get_annotation(node).input_qspec_map
        w = node.args[1]
        assert qmap[w].dtype == torch.int8 and qmap[w].qscheme == torch.per_channel_symmetric
        # overflow_fix="first_layer_only" (the reference's default): the first conv is half range
        first = bool(convs) and node is convs[0]
        assert (qmap[w].quant_min, qmap[w].quant_max) == ((-63, 63) if first else (-127, 127))
        assert len(node.args) < 3 or node.args[2] not in qmap  # bias stays float


@pytest.mark.parametrize("mode", STATIC)
@pytest.mark.parametrize("name", MODELS)
def test_converted_model_is_within_sqnr_of_float(name, mode):
    model, gm, args = converted(name, OpenVINOQuantizer(mode=mode))
    assert sqnr(model(*args), gm(*args)) >= MIN_SQNR_DB


@pytest.mark.parametrize("mode, dtype, qscheme", [
    ("int8_sym", torch.int8, torch.per_tensor_symmetric),
    ("int8_mixed", torch.uint8, torch.per_tensor_affine),
    ("int8_transformer", torch.uint8, torch.per_tensor_affine),
])
def test_signed_model_input_spec_per_mode(mode, dtype, qscheme):
    gm = annotated("MLP", mode)
    fc1 = weighted(gm)[0]
    spec = get_annotation(fc1).input_qspec_map[fc1.args[0]]
    assert (spec.dtype, spec.qscheme) == (dtype, qscheme)


def test_post_relu_activation_is_unsigned_with_zero_point_0_in_sym_mode():
    # the reference's INT8_SYM uses 0..255 symmetric there: zero point 128, half the levels unused
    _, gm, _ = converted("MLP", OpenVINOQuantizer(mode=QuantizationMode.INT8_SYM))
    relus = [n for n in gm.graph.nodes if n.target == aten.relu.default]
    assert len(relus) == 2
    for relu in relus:
        (q,) = quantizes(relu)
        _, _scale, zp, qmin, qmax, dtype = q.args
        assert (zp, qmin, qmax, dtype) == (0, 0, 255, torch.uint8)


def test_post_relu_unsigned_range_beats_a_symmetric_one_on_the_mlp():
    model, ours, args = converted("MLP", OpenVINOQuantizer(mode="int8_sym"))
    # the same graph with the post-ReLU inputs forced to the signed symmetric spec
    q = OpenVINOQuantizer(mode="int8_sym")
    import quantizers.openvino_patterns as P

    original = P.is_non_negative
    P.is_non_negative = lambda node, _depth=0: False
    try:
        _, signed, _ = converted("MLP", q)
    finally:
        P.is_non_negative = original
    assert sqnr(model(*args), ours(*args)) > sqnr(model(*args), signed(*args)) + 1.0


def test_agnostic_ops_share_one_quantizer():
    # relu2 -> maxpool -> flatten -> fc: one scale before and after the pool and the flatten
    _, gm, _ = converted("SmallCNN", OpenVINOQuantizer())
    pool = next(n for n in gm.graph.nodes if n.target == aten.max_pool2d.default)
    flatten = next(n for n in gm.graph.nodes if n.target == aten.flatten.using_ints)
    scales = {q.args[1] for q in gm.graph.nodes if q.target == QD.quantize_per_tensor.default
              and q.args[0] in (pool, flatten, pool.args[0].args[0])}
    assert len(scales) == 1
    assert all(len(quantizes(n)) == 1 for n in (pool, flatten))


def test_cat_inputs_share_one_group():
    _, gm, _ = converted("ConvCat", OpenVINOQuantizer())
    cat = next(n for n in gm.graph.nodes if n.target == aten.cat.default)
    branch_qs = [a.args[0] for a in cat.args[0]]
    assert all(q.target == QD.quantize_per_tensor.default for q in branch_qs)
    assert len({q.args[1:] for q in branch_qs}) == 1


def test_layer_norm_weights_are_never_observed():
    # the reference's INT8_SYM / INT8_MIXED put a per-channel weight observer on the 1-D
    # LayerNorm bias and crash with IndexError; ours quantizes the block
    for mode in ("int8_sym", "int8_mixed"):
        gm = annotated("TransformerBlock", mode)
        for ln in (n for n in gm.graph.nodes if n.target == aten.layer_norm.default):
            assert get_annotation(ln) is None
            assert not any(get_annotation(u) and a in get_annotation(u).input_qspec_map
                           for a in ln.args[2:4] for u in a.users)


def test_sdpa_stays_float_and_is_reported():
    q = OpenVINOQuantizer(mode="int8_transformer")
    gm = annotated("TransformerBlock", "int8_transformer")
    sdpa = next(n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default)
    assert not is_annotated(sdpa)
    report = q.report(torch.export.export(M.TransformerBlock().eval(),
                                          M.example_inputs("TransformerBlock")).module())
    assert [r.node for r in report.records] == ["scaled_dot_product_attention"]
    assert "fails at inference" in report.records[0].reason


def test_transformer_mode_leaves_the_residual_adds_float():
    sym = annotated("TransformerBlock", "int8_sym")
    tr = annotated("TransformerBlock", "int8_transformer")
    adds = lambda gm: [n for n in gm.graph.nodes if n.target == aten.add.Tensor]  # noqa: E731
    assert all(is_annotated(a) for a in adds(sym))
    assert not any(is_annotated(a) for a in adds(tr))


@pytest.mark.parametrize("mode", STATIC)
def test_attention_matmuls_are_quantized_symmetric_second_input_signed(mode):
    _, gm, _ = converted("Attention", OpenVINOQuantizer(mode=mode))
    mms = [n for n in gm.graph.nodes if n.target in (aten.matmul.default, aten.bmm.default)]
    assert len(mms) == 2
    for mm in mms:
        a, b = mm.args[:2]
        assert a.target == QD.dequantize_per_tensor.default and b.target == QD.dequantize_per_tensor.default
        # symmetric operands (OpenVINO runs an asymmetric one in f32), the second signed
        assert a.args[2] == 0 and (b.args[2], b.args[5]) == (0, torch.int8)


# --- weight-only ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, conv_range, linear_range", [
    ("int8wo_sym", (-127, 127), (-127, 127)),
    ("int8wo_asym", (0, 255), (0, 255)),
    ("int4wo_sym", (-127, 127), (-8, 7)),   # conv at NNCF's 8-bit backup precision
    ("int4wo_asym", (0, 255), (0, 15)),
])
def test_weight_only_annotates_weights_only(mode, conv_range, linear_range):
    gm = annotated("SmallCNN", mode)
    for node in weighted(gm):
        qmap = get_annotation(node).input_qspec_map
        assert list(qmap) == [node.args[1]]
        spec = qmap[node.args[1]]
        expected = conv_range if node.target == aten.conv2d.default else linear_range
        assert (spec.quant_min, spec.quant_max) == expected


@pytest.mark.parametrize("mode", WEIGHT_ONLY)
def test_weight_only_converted_sqnr(mode):
    model, gm, args = converted("TransformerBlock", OpenVINOQuantizer(mode=mode))
    bound = MIN_SQNR_INT4_DB if mode.startswith("int4") else MIN_SQNR_DB
    assert sqnr(model(*args), gm(*args)) >= bound
    assert not any(n.target == QD.quantize_per_tensor.default for n in gm.graph.nodes)


# --- ignored scope -------------------------------------------------------------------------------

@pytest.mark.parametrize("scope, ignored", [
    pytest.param({"names": ["linear_1"]}, {"linear_1"}, id="names"),
    pytest.param({"patterns": [r"linear_[12]"]}, {"linear_1", "linear_2"}, id="patterns"),
    pytest.param({"types": ["linear"]}, {"linear", "linear_1", "linear_2"}, id="types"),
    pytest.param({"subgraphs": [(["linear_1"], ["linear_2"])]}, {"linear_1", "linear_2"}, id="subgraphs"),
])
def test_ignored_scope_leaves_nodes_float(scope, ignored):
    q = OpenVINOQuantizer()
    q.set_ignored_scope(**scope)
    model, gm, args = converted("MLP", q)
    linears = {n.name: n for n in gm.graph.nodes if n.target == aten.linear.default}
    for name, node in linears.items():
        from_dq = node.args[1].target == QD.dequantize_per_channel.default
        assert from_dq == (name not in ignored), name
    assert {r.node for r in q.report().records} == ignored
    assert all("ignored scope" in r.reason for r in q.report().records)


def test_ignored_scope_validates_entries():
    q = OpenVINOQuantizer()
    q.set_ignored_scope(names=["linear"], types=["conv2d"])
    with pytest.raises(QuantizationConfigError, match="types 'conv2d' matched no node"):
        converted("MLP", q)
    q.set_ignored_scope(names=["linear"], types=["conv2d"], validate=False)
    converted("MLP", q)


@pytest.mark.parametrize("kwargs, error, match", [
    pytest.param({"mode": "int9"}, ArgumentValueError, "not an OpenVINO quantization mode", id="mode"),
    pytest.param({"preset": "mixed"}, ArgumentValueError, "NNCF algorithm options", id="nncf_kwarg"),
    pytest.param({"mode": "int4wo_sym", "group_size": 64}, QuantizationConfigError, "per-channel",
                 id="group_size"),
    pytest.param({"mode": "int8_sym", "group_size": 64}, ArgumentValueError, "INT4WO", id="group_int8"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        OpenVINOQuantizer(**kwargs)


def test_ignored_scope_argument_errors():
    q = OpenVINOQuantizer()
    with pytest.raises(ArgumentTypeError, match="names must be a list of str"):
        q.set_ignored_scope(names="linear")
    with pytest.raises(ArgumentValueError, match="not a regular expression"):
        q.set_ignored_scope(patterns=["("])


def test_mode_accepts_enum_value_and_string():
    assert OpenVINOQuantizer(mode="int8_mixed").mode is QuantizationMode.INT8_MIXED
    assert OpenVINOQuantizer().mode is QuantizationMode.INT8_SYM


# --- overflow_fix (NNCF's option): half-range weights for CPUs without VNNI ------------------------

class TwoInputs(torch.nn.Module):
    """Input a: conv -> conv; input b: linear -> conv (NNCF's walk passes linears)."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1)
        self.fc, self.b1 = torch.nn.Linear(8, 8), torch.nn.Conv2d(4, 4, 1)

    def forward(self, a, b):
        return self.a2(self.a1(a)), self.b1(self.fc(b))


def _weight_ranges(gm) -> dict[str, tuple[int, int]]:
    out = {}
    for node in gm.graph.nodes:
        if node.target in (aten.conv2d.default, aten.linear.default):
            spec = get_annotation(node).input_qspec_map[node.args[1]]
            out[node.name] = (spec.quant_min, spec.quant_max)
    return out


@pytest.mark.parametrize("fix, half", [
    (None, {"conv2d", "conv2d_2"}),              # the reference's default: first convs per input
    ("first_layer_only", {"conv2d", "conv2d_2"}),
    ("enable", {"conv2d", "conv2d_1", "linear", "conv2d_2"}),
    ("disable", set()),
])
def test_overflow_fix_halves_the_weight_range_of_the_chosen_layers(fix, half):
    args = (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8))
    gm = torch.export.export(TwoInputs().eval(), args).module()
    ranges = _weight_ranges(OpenVINOQuantizer(overflow_fix=fix).annotate(gm))
    assert ranges == {n: (-63, 63) if n in half else (-127, 127) for n in ranges}


def test_overflow_fix_in_the_config_and_bad_values():
    from quantizers import get_openvino_quantization_config

    cfg = get_openvino_quantization_config(overflow_fix="enable")
    assert (cfg.weight.quant_min, cfg.weight.quant_max) == (-63, 63)
    with pytest.raises(ArgumentValueError, match="overflow_fix='sometimes'"):
        OpenVINOQuantizer(overflow_fix="sometimes")
    with pytest.raises(ArgumentValueError, match="static int8 modes"):
        OpenVINOQuantizer(mode="int8wo_sym", overflow_fix="enable")
    with pytest.raises(ArgumentValueError, match="static int8 modes"):
        get_openvino_quantization_config("int4wo_sym", overflow_fix="enable")
