"""prepare_qat_pt2e: fake quantizers, conv+bn simulation, folding at convert."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from support.numerics import op_sequence, sqnr
from support.reference_quantizer import ReferenceQuantizer
from torch import nn

from observers import FakeQuantizeBase, disable_fake_quant, disable_observer
from pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from pt2e.prepare import observer_nodes


class ConvBNReLU(nn.Module):
    def __init__(self, kind="conv2d", bias=True, relu=True):
        super().__init__()
        conv, bn = {
            "conv1d": (nn.Conv1d(3, 8, 3, bias=bias), nn.BatchNorm1d(8)),
            "conv2d": (nn.Conv2d(3, 8, 3, bias=bias), nn.BatchNorm2d(8)),
            "conv_transpose2d": (nn.ConvTranspose2d(3, 8, 3, bias=bias), nn.BatchNorm2d(8)),
        }[kind]
        self.conv, self.bn = conv, bn
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


SHAPES = {"conv1d": (4, 3, 16), "conv2d": (4, 3, 8, 8), "conv_transpose2d": (4, 3, 6, 6)}
CASES = [
    pytest.param("conv2d", True, True, True, id="conv2d-bias-relu-per_channel"),
    pytest.param("conv2d", False, True, False, id="conv2d-nobias-relu-per_tensor"),
    pytest.param("conv1d", True, False, True, id="conv1d-bias-per_channel"),
    pytest.param("conv_transpose2d", True, True, False, id="convT2d-bias-relu-per_tensor"),
]


def _qat(model, x, per_channel=True):
    gm = torch.export.export(model.train(), (x,)).module()
    return prepare_qat_pt2e(gm, ReferenceQuantizer(is_qat=True, per_channel=per_channel))


def _train(prepared, shape, steps=4):
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(steps):
        loss = prepared(torch.randn(*shape)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_fake_quantizers_are_inserted_where_ptq_puts_observers():
    x = torch.randn(*SHAPES["conv2d"])
    prepared = _qat(ConvBNReLU(), x)
    modules = dict(prepared.named_modules(remove_duplicate=False))
    fqs = [modules[n.target] for n in observer_nodes(prepared)]
    assert fqs and all(isinstance(m, FakeQuantizeBase) for m in fqs)
    ptq = prepare_pt2e(torch.export.export(ConvBNReLU().eval(), (x,)).module(),
                       ReferenceQuantizer())
    assert len(fqs) == len(observer_nodes(ptq))


@pytest.mark.parametrize("kind,bias,relu,per_channel", CASES)
def test_converted_qat_graph_has_ptq_structure(kind, bias, relu, per_channel):
    shape = SHAPES[kind]
    x = torch.randn(*shape)
    model = ConvBNReLU(kind, bias, relu)
    prepared = _qat(copy.deepcopy(model), x, per_channel)
    _train(prepared, shape)
    converted = convert_pt2e(move_exported_model_to_eval(prepared))

    ptq = prepare_pt2e(torch.export.export(model.eval(), (x,)).module(),
                       ReferenceQuantizer(per_channel=per_channel))
    ptq(x)
    assert op_sequence(converted) == op_sequence(convert_pt2e(ptq))


@pytest.mark.parametrize("kind,bias,relu,per_channel", CASES)
def test_converted_matches_qat_model_in_eval(kind, bias, relu, per_channel):
    shape = SHAPES[kind]
    x = torch.randn(*shape)
    prepared = _qat(ConvBNReLU(kind, bias, relu), x, per_channel)
    _train(prepared, shape)
    prepared = move_exported_model_to_eval(prepared)
    prepared.apply(disable_observer)
    expected = prepared(x)
    converted = convert_pt2e(prepared)
    assert sqnr(expected, converted(x)) > 35


def test_conv_bn_training_numerics_match_float_with_fake_quant_off():
    shape = SHAPES["conv2d"]
    x = torch.randn(*shape)
    model = ConvBNReLU().train()
    reference = copy.deepcopy(model)
    prepared = _qat(model, x)
    prepared.apply(disable_fake_quant)
    batch = torch.randn(*shape)
    torch.testing.assert_close(prepared(batch), reference(batch), atol=1e-5, rtol=1e-4)
    running = dict(prepared.named_buffers())["bn.running_mean"]
    torch.testing.assert_close(running, reference.bn.running_mean)


def test_gradients_flow_through_fake_quant_to_conv_weight():
    shape = SHAPES["conv2d"]
    prepared = _qat(ConvBNReLU(), torch.randn(*shape))
    prepared(torch.randn(*shape)).sum().backward()
    grads = {n: p.grad for n, p in prepared.named_parameters()}
    assert grads["conv.weight"] is not None and grads["conv.weight"].abs().sum() > 0
    assert grads["bn.weight"] is not None


def test_fake_quant_qparams_are_those_convert_emits():
    shape = SHAPES["conv2d"]
    prepared = _qat(ConvBNReLU(), torch.randn(*shape))
    _train(prepared, shape)
    prepared = move_exported_model_to_eval(prepared)
    modules = dict(prepared.named_modules(remove_duplicate=False))
    out_fq = modules[observer_nodes(prepared)[-1].target]
    scale, zp = out_fq.calculate_qparams()
    converted = convert_pt2e(prepared)
    last_q = [n for n in converted.graph.nodes
              if getattr(n.target, "__name__", "") == "quantize_per_tensor.default"][-1]
    assert (last_q.args[1], last_q.args[2]) == (float(scale), int(zp))


def test_train_eval_switch_and_save_load_of_converted():
    shape = SHAPES["conv2d"]
    x = torch.randn(*shape)
    prepared = _qat(nn.Sequential(ConvBNReLU(), nn.Dropout(0.5)), x)
    prepared = move_exported_model_to_train(prepared)
    _train(prepared, shape)
    converted = convert_pt2e(move_exported_model_to_eval(prepared))
    assert torch.equal(converted(x), converted(x))  # dropout off
    buf = io.BytesIO()
    torch.export.save(torch.export.export(converted, (x,)), buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), converted(x))
