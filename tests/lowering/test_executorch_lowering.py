"""Lowering to ExecuTorch/XNNPACK: every linear/conv runs inside the delegate, the .pte runs,
and its numbers match float (SQNR) and our own converted model (one output quantization step).
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from support.models import MLP, SmallCNN, export
from support.numerics import sqnr
from torch import nn

from lowering import XnnpackLoweringError, check_xnnpack_graph, check_xnnpack_int8, to_executorch
from observers import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver
from pt2e import convert_pt2e, move_exported_model_to_eval, prepare_pt2e, prepare_qat_pt2e
from pt2e.quantizer import (
    QuantizationSpec,
    Quantizer,
    annotate_input_qspec_map,
    annotate_output_qspec,
)
from quantizers import XNNPACKQuantizer, XnnpackSkipWarning, get_symmetric_quantization_config

pytest.importorskip("executorch.runtime")

MIN_SQNR_DB = 30.0  # .pte against the float model
MIN_DYNAMIC_AGREEMENT_DB = 35.0  # dynamic .pte against our converted model (outputs are float)


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: multi-head attention and a GELU MLP, both residual."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class Tied(nn.Module):
    """One nn.Linear applied twice: its weight and bias feed two layers with different input scales."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 16)
        with torch.no_grad():
            self.fc.bias.mul_(3)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.fc(x))))


MODELS = {
    "mlp": (lambda: MLP((32, 64, 16)), (8, 32)),
    "cnn": (lambda: SmallCNN(), (2, 3, 16, 16)),
    "transformer": (lambda: TransformerBlock(), (2, 8, 32)),
    "tied": (lambda: Tied(), (8, 32)),
}


def _calibrated(model, shape, quantizer, steps=8):
    prepared = prepare_pt2e(export(model, torch.randn(*shape)), quantizer)
    for _ in range(steps):
        prepared(torch.randn(*shape))
    return convert_pt2e(prepared)


def _output_scale(converted) -> float:
    out = next(n for n in converted.graph.nodes if n.op == "output").args[0][0]
    assert out.target == torch.ops.quantized_decomposed.dequantize_per_tensor.default, out.target
    return float(out.args[1])


def _assert_all_weighted_delegated(program, model):
    expected = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    if isinstance(model, Tied):
        expected += 1  # fc is applied twice
    report = program.report
    assert report.weighted_outside == (), report.summary()
    assert report.count("linear") + report.count("convolution") == expected, report.summary()
    assert report.count("dequantize_per_channel") + report.count("dequantize_per_tensor") > 0


def _lower_run_and_check(model, converted, shape):
    """Lower, run the .pte, and compare with float and with the converted graph."""
    x = torch.randn(*shape)
    program = to_executorch(converted, (x,))
    _assert_all_weighted_delegated(program, model)
    assert check_xnnpack_int8(converted, program) == [], program.report.summary()
    out = program(x)
    assert sqnr(model(x), out) >= MIN_SQNR_DB
    # within one output quantization step of our converted model run in PyTorch
    assert (out - converted(x)).abs().max().item() <= _output_scale(converted) * 1.001


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_static_int8_lowers_runs_and_matches(name):
    model_fn, shape = MODELS[name]
    model = model_fn().eval()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    _lower_run_and_check(model, _calibrated(model, shape, quantizer), shape)


@pytest.mark.slow
@pytest.mark.parametrize("weight_bits", [8, 4], ids=["int8", "int4"])
@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_dynamic_lowers_runs_and_matches(name, weight_bits):
    model_fn, shape = MODELS[name]
    model = model_fn().eval()
    wq = {"weight_qmin": -8, "weight_qmax": 7} if weight_bits == 4 else {}
    cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, **wq)
    converted = _calibrated(model, shape, XNNPACKQuantizer().set_global(cfg), steps=1)
    x = torch.randn(*shape)

    program = to_executorch(converted, (x,))
    _assert_all_weighted_delegated(program, model)
    assert check_xnnpack_int8(converted, program) == [], program.report.summary()
    assert program.report.count("choose_qparams") > 0
    out = program.runner()(x)

    assert sqnr(converted(x), out) >= MIN_DYNAMIC_AGREEMENT_DB
    # 4-bit weights cost accuracy by design; int8 must meet the float bar
    assert sqnr(model(x), out) >= (MIN_SQNR_DB if weight_bits == 8 else 15.0)


@pytest.mark.slow
def test_dynamic_config_lowers_cnn_with_depthwise_left_float():
    class DW(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.pw = nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.pw(self.dw(x))

    model, x = DW().eval(), torch.randn(1, 8, 8, 8)
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    with pytest.warns(XnnpackSkipWarning):
        converted = _calibrated(model, x.shape, q, steps=1)
    program = to_executorch(converted, (x,))
    assert program.report.weighted_outside == ()  # the float depthwise conv runs in XNNPACK too
    assert sqnr(model(x), program.runner()(x)) >= MIN_SQNR_DB


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_qat_trains_converts_and_lowers(name):
    model_fn, shape = MODELS[name]
    model = model_fn().train()
    x0 = torch.randn(*shape)
    gm = torch.export.export(model, (x0,)).module()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = prepare_qat_pt2e(gm, quantizer)
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(3):
        xb = torch.randn(*shape)
        loss = (prepared(xb) - model(xb).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    converted = convert_pt2e(move_exported_model_to_eval(prepared))
    model.eval()
    x = torch.randn(*shape)

    program = to_executorch(converted, (x,))
    _assert_all_weighted_delegated(program, model)
    assert check_xnnpack_int8(converted, program) == [], program.report.summary()
    out = program(x)
    step = _output_scale(converted)
    assert (out - converted(x)).abs().max().item() <= step * 1.001
    assert sqnr(converted(x), out) >= MIN_SQNR_DB


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "tied"])
def test_third_party_executorch_quantizer_through_our_flow_lowers(name):
    """ExecuTorch's own quantizer (written for torchao's API) through our prepare/convert/lowering.

    ``tied``: through torchao + ExecuTorch's stock lowering this model's .pte loses ~20 dB
    against its converted graph (a shared bias quantized with one layer's scale); ours must not.
    """
    xnn = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    model_fn, shape = MODELS[name]
    model = model_fn().eval()
    quantizer = xnn.XNNPACKQuantizer().set_global(xnn.get_symmetric_quantization_config(is_per_channel=True))
    _lower_run_and_check(model, _calibrated(model, shape, quantizer), shape)


@pytest.mark.slow
def test_runner_keeps_program_alive_and_report_explains_outside_ops(tmp_path):
    class WithCumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=-1)

    x = torch.randn(2, 8)
    model = WithCumsum().eval()
    program = to_executorch(model, (x,), path=tmp_path / "m.pte")
    assert (tmp_path / "m.pte").read_bytes() == program.buffer
    outside = [o for o in program.report.outside if "cumsum" in o.op]
    assert outside and outside[0].reason
    runner = program.runner()
    del program
    gc.collect()
    for _ in range(3):
        torch.testing.assert_close(runner(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_unread_buffers_stay_out_of_the_pte():
    # convert_pt2e drops what it stops reading; a buffer the graph never reads (added by
    # hand here, as another flow might leave one) would otherwise be serialized too
    model = MLP((8, 16, 4))
    converted = _calibrated(model, (2, 8), XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)), steps=1)
    x = torch.randn(2, 8)
    clean = to_executorch(converted, (x,))
    converted.register_buffer("unread", torch.zeros(100_000))
    with_unread = to_executorch(converted, (x,))
    assert with_unread.size_bytes == clean.size_bytes
    assert hasattr(converted, "unread")  # to_executorch lowered a copy


# --------------------------------------------------------------------------- checks (fast)


class _LinearSpecs(Quantizer):
    """Quantize every linear with the given activation and weight specs (no backend rules)."""

    def __init__(self, act, weight):
        self.act, self.weight = act, weight

    def annotate(self, model):
        for n in model.graph.nodes:
            if n.target == torch.ops.aten.linear.default:
                annotate_input_qspec_map(n, n.args[0], self.act)
                annotate_input_qspec_map(n, n.args[1], self.weight)
                annotate_output_qspec(n, self.act)
        return model

    def validate(self, model):
        pass


_INT8_ACT = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                             qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=HistogramObserver)
_UINT8_ACT = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                              qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
_SYM_W = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
                          qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=MinMaxObserver)
_ASYM_W = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                           qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=MinMaxObserver)
_ASYM_PC_W = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, ch_axis=0,
                              qscheme=torch.per_channel_affine,
                              observer_or_fake_quant_ctr=PerChannelMinMaxObserver)


@pytest.mark.parametrize("act, weight, match", [
    (_UINT8_ACT, _SYM_W, "torch.uint8"),
    (_INT8_ACT, _ASYM_W, "per-tensor with non-zero zero point"),
    (_INT8_ACT, _ASYM_PC_W, "per-channel with non-zero zero point"),
], ids=["uint8_activations", "asymmetric_weight", "asymmetric_per_channel_weight"])
def test_check_names_the_node_xnnpack_would_reject(act, weight, match):
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = _calibrated(model, (4, 8), _LinearSpecs(act, weight), steps=1)
    with pytest.raises(XnnpackLoweringError, match=match) as err:
        check_xnnpack_graph(converted)
    assert "node '" in str(err.value) and "(module 0)" in str(err.value)
    with pytest.raises(XnnpackLoweringError):
        to_executorch(converted, (torch.randn(4, 8),))


def test_check_accepts_our_quantizer_output():
    model = MLP((8, 16, 4))
    converted = _calibrated(model, (2, 8), XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)), steps=1)
    check_xnnpack_graph(converted)


@pytest.mark.parametrize(("qmin", "qmax", "match"), [
    (0, 15, r"range 0\.\.15 .*negative weight is clamped to 0"),
    (-128, 100, r"range -128\.\.100 .*rejects such weights"),
], ids=["uint4", "asymmetric"])
def test_weight_range_executorch_accepts_is_refused_at_lowering(qmin, qmax, match):
    cfg = get_symmetric_quantization_config(
        is_per_channel=True, is_dynamic=True, weight_qmin=qmin, weight_qmax=qmax)
    converted = _calibrated(MLP((8, 16, 4)), (2, 8), XNNPACKQuantizer().set_global(cfg), steps=1)
    with pytest.raises(XnnpackLoweringError, match=match) as err:
        check_xnnpack_graph(converted)
    assert "node '" in str(err.value)
    with pytest.raises(XnnpackLoweringError, match=match):
        to_executorch(converted, (torch.randn(2, 8),))
