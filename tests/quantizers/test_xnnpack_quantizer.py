"""XNNPACKQuantizer: configs, annotation structure, and parity with ExecuTorch's own quantizer.

Fast tier: tiny models, no lowering (lowering lives in tests/lowering/test_executorch_*.py).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from support.models import MLP, SmallCNN, export
from support.numerics import count_targets
from torch import nn

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import QuantizationConfigError
from pt2e.quantizer import get_annotation
from quantizers import XNNPACKQuantizer, XnnpackSkipWarning, get_symmetric_quantization_config

QPT = "quantize_per_tensor.default"
DQPT = "dequantize_per_tensor.default"
DQPC = "dequantize_per_channel.default"


def _convert(model, x, config, quantizer=None):
    gm = export(model, x)
    q = quantizer or XNNPACKQuantizer().set_global(config)
    prepared = prepare_pt2e(gm, q)
    prepared(x)
    return convert_pt2e(prepared)


def _annotated(gm):
    return {n.name for n in gm.graph.nodes if get_annotation(n) is not None}


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("kwargs, weight_qscheme, act_ctr", [
    ({}, torch.per_tensor_symmetric, "HistogramObserver"),
    ({"is_per_channel": True}, torch.per_channel_symmetric, "HistogramObserver"),
    ({"is_dynamic": True}, torch.per_tensor_symmetric, "PlaceholderObserver"),
    ({"is_qat": True}, torch.per_tensor_symmetric, "FusedMovingAvgObsFakeQuantize"),
], ids=["static", "per_channel", "dynamic", "qat"])
def test_config_matches_executorch_defaults(kwargs, weight_qscheme, act_ctr):
    cfg = get_symmetric_quantization_config(**kwargs)
    act = cfg.input_activation
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme) == (
        torch.int8, -128, 127, torch.per_tensor_affine)
    assert act.is_dynamic == kwargs.get("is_dynamic", False)
    assert (cfg.output_activation is None) == kwargs.get("is_dynamic", False)
    assert (cfg.weight.dtype, cfg.weight.quant_min, cfg.weight.quant_max) == (torch.int8, -127, 127)
    assert cfg.weight.qscheme == weight_qscheme and cfg.bias is None
    assert act_ctr in repr(act.observer_or_fake_quant_ctr)


def test_config_is_cached():
    assert get_symmetric_quantization_config(is_per_channel=True) is \
        get_symmetric_quantization_config(is_per_channel=True)


def test_4bit_weights_need_per_channel():
    cfg = get_symmetric_quantization_config(
        is_per_channel=True, is_dynamic=True, weight_qmin=-8, weight_qmax=7)
    assert (cfg.weight.quant_min, cfg.weight.quant_max) == (-8, 7)
    with pytest.raises(QuantizationConfigError, match="is_per_channel=True"):
        get_symmetric_quantization_config(is_dynamic=True, weight_qmin=-8, weight_qmax=7)


@pytest.mark.parametrize(("qmin", "qmax"), [(0, 15), (-128, 100)], ids=["uint4", "asymmetric"])
def test_any_weight_range_is_accepted_as_executorch_does(qmin, qmax):
    """Accepted here (ExecuTorch's contract); lowering refuses it (tests/lowering/test_executorch_lowering.py)."""
    cfg = get_symmetric_quantization_config(
        is_per_channel=True, is_dynamic=True, weight_qmin=qmin, weight_qmax=qmax)
    assert (cfg.weight.quant_min, cfg.weight.quant_max, cfg.weight.dtype) == (qmin, qmax, torch.int8)


# --------------------------------------------------------------------------- structure


def test_linear_relu_is_fused_one_quantize_per_edge():
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    gm = _convert(MLP((8, 16, 4)), torch.randn(2, 8), cfg)
    # input, relu output (fused: nothing between linear and relu), final linear output
    assert count_targets(gm).get(QPT) == 3
    assert count_targets(gm).get(DQPC) == 2
    relu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default)
    assert relu.args[0].target == torch.ops.aten.linear.default


def test_conv_bn_relu_after_folding_and_pool_share_qparams():
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    gm = _convert(SmallCNN().eval(), torch.randn(1, 3, 8, 8), cfg)
    qd = torch.ops.quantized_decomposed
    pool = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.max_pool2d.default)
    q_in, q_out = pool.args[0].args[0], next(iter(pool.users))
    assert q_in.target == qd.quantize_per_tensor.default
    assert q_out.target == qd.quantize_per_tensor.default
    assert q_in.args[1:3] == q_out.args[1:3]  # max pool keeps its input's scale and zero point
    assert count_targets(gm).get(DQPC) == 3


class _CatAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return torch.relu(y + 1.0) * y


def test_cat_inputs_and_output_share_one_scale():
    gm = _convert(_CatAdd().eval(), torch.randn(1, 3, 4, 4), get_symmetric_quantization_config())
    cat = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.cat.default)
    scales = {dq.args[0].args[1] for dq in cat.args[0]}
    scales.add(next(iter(cat.users)).args[1])
    assert len(scales) == 1


def test_scalar_add_operand_becomes_quantized_constant():
    gm = export(_CatAdd().eval(), torch.randn(1, 3, 4, 4))
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    gm = q.annotate(q.transform_for_annotation(gm))
    add = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.add.Tensor)
    assert all(isinstance(a, torch.fx.Node) for a in add.args[:2])
    assert len(get_annotation(add).input_qspec_map) == 2
    relu = next(iter(add.users))
    assert get_annotation(relu).output_qspec is not None  # add_relu fused: output on the relu


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_module_applied_twice_is_quantized_at_both_uses():
    gm = _convert(_Tied().eval(), torch.randn(2, 8), get_symmetric_quantization_config())
    linears = [n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == 2
    for lin in linears:
        assert lin.args[1].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default


def test_dynamic_config_quantizes_linear_inputs_at_run_time():
    cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    counts = count_targets(_convert(MLP((8, 16, 4)), torch.randn(2, 8), cfg))
    assert counts.get("choose_qparams.tensor") == 2
    assert counts.get(QPT, 0) == 0 and counts.get(DQPC) == 2


class _Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.pw = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


def test_dynamic_config_reports_what_it_cannot_quantize():
    gm = export(_Depthwise().eval(), torch.randn(1, 4, 6, 6))
    q = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    with pytest.warns(XnnpackSkipWarning, match="depthwise"):
        q.annotate(gm)
    assert [(s.node, s.module) for s in q.skipped] == [("conv2d", "dw")]
    assert get_annotation(next(n for n in gm.graph.nodes if n.name == "conv2d_1")) is not None


def test_static_config_reports_nothing():
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", XnnpackSkipWarning)
        q.annotate(export(_Depthwise().eval(), torch.randn(1, 4, 6, 6)))
    assert q.skipped == []


# --------------------------------------------------------------------------- configuration API


def test_module_name_none_keeps_that_module_float():
    gm = export(MLP((8, 16, 4)), torch.randn(2, 8))
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_module_name("net.2", None)
    q.annotate(gm)
    linears = [n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert get_annotation(linears[0]).input_qspec_map
    ann = get_annotation(linears[1])
    assert ann is None or not ann.input_qspec_map


def test_module_type_beats_global():
    gm = export(_Depthwise().eval(), torch.randn(1, 4, 6, 6))
    pc = get_symmetric_quantization_config(is_per_channel=True)
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_module_type(nn.Conv2d, pc)
    q.annotate(gm)
    for conv in (n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default):
        specs = get_annotation(conv).input_qspec_map
        assert specs[conv.args[1]].qscheme == torch.per_channel_symmetric


@pytest.mark.parametrize("operator", [torch.ops.aten.linear.default, torch.ops.aten.linear],
                         ids=["overload", "packet"])
def test_operator_type_selects_only_that_operator(operator):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(12, 2)).eval()
    gm = export(model, torch.randn(1, 3, 2, 2))
    XNNPACKQuantizer().set_operator_type(operator, get_symmetric_quantization_config()).annotate(gm)
    assert {n.target for n in gm.graph.nodes if get_annotation(n) is not None
            and get_annotation(n).input_qspec_map} == {torch.ops.aten.linear.default}


# --------------------------------------------------------------------------- parity


_STATIC = {"is_per_channel": True}
_DYNAMIC = {"is_per_channel": True, "is_dynamic": True}
_QDQ_KEYS = (QPT, DQPT, DQPC, "choose_qparams.tensor", "quantize_per_tensor.tensor")


def _both(model, x, kwargs):
    xnn = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    ours = _convert(copy.deepcopy(model), x, get_symmetric_quantization_config(**kwargs))
    ref_q = xnn.XNNPACKQuantizer().set_global(xnn.get_symmetric_quantization_config(**kwargs))
    theirs = _convert(copy.deepcopy(model), x, None, quantizer=ref_q)
    ours_c, theirs_c = count_targets(ours), count_targets(theirs)
    return (ours, {k: ours_c.get(k, 0) for k in _QDQ_KEYS},
            theirs, {k: theirs_c.get(k, 0) for k in _QDQ_KEYS})


@pytest.mark.parametrize("model_fn, shape, kwargs", [
    (lambda: MLP((8, 16, 4)), (2, 8), _STATIC),
    (lambda: SmallCNN().eval(), (1, 3, 8, 8), _STATIC),
    (lambda: _CatAdd().eval(), (1, 3, 4, 4), _STATIC),
    (lambda: MLP((8, 16, 4)), (2, 8), _DYNAMIC),
    (lambda: _Depthwise().eval(), (1, 4, 6, 6), _DYNAMIC),
], ids=["mlp-static", "cnn-static", "cat_add-static", "mlp-dynamic", "depthwise-dynamic"])
def test_same_qdq_as_executorch_quantizer(model_fn, shape, kwargs):
    """Our quantizer and ExecuTorch's, both through our prepare/convert, give the same q/dq ops."""
    torch.manual_seed(0)
    model, x = model_fn(), torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XnnpackSkipWarning)
        ours, ours_c, theirs, theirs_c = _both(model, x, kwargs)
    assert ours_c == theirs_c
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_dynamic_conv_followed_by_relu_is_quantized_unlike_executorch():
    """Deliberate difference: ExecuTorch's dynamic config skips a conv whose only user is a relu
    (its static conv_relu pattern would own it); ours quantizes the conv and leaves relu float."""
    torch.manual_seed(0)
    _, ours_c, _, theirs_c = _both(SmallCNN().eval(), torch.randn(1, 3, 8, 8), _DYNAMIC)
    assert ours_c["choose_qparams.tensor"] == 3  # two conv-relu blocks and the classifier
    assert theirs_c["choose_qparams.tensor"] == 1
