"""QAT models (and QAT/PTQ mixes) convert to the PTQ structure and lower to oneDNN int8."""

from __future__ import annotations

import pytest
import torch
from support.numerics import sqnr
from torch import nn

from lowering import compile_x86
from observers import FakeQuantizeBase, ObserverBase
from pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    prepare_qat_pt2e,
)
from pt2e.prepare import observer_nodes
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

RR = x86_needs_reduce_range()
QAT = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=RR)
PTQ = get_default_x86_inductor_quantization_config(reduce_range=RR)


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = self.block2(self.block1(x))
        return self.head(y.mean((2, 3)))


def _prepare(quantizer, x):
    gm = torch.export.export(TwoBlocks().train(), (x,)).module()
    prepared = move_exported_model_to_train(prepare_qat_pt2e(gm, quantizer))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(3):
        prepared(torch.randn_like(x)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return move_exported_model_to_eval(prepared)


def _observer_modules(prepared, module_path):
    modules = dict(prepared.named_modules(remove_duplicate=False))
    return [modules[n.target] for n in observer_nodes(prepared)
            if n.args[0].op == "call_function" and any(
                p == module_path for p, _ in n.args[0].meta.get("nn_module_stack", {}).values())]


def test_module_name_config_mixes_qat_and_ptq():
    x = torch.randn(4, 3, 8, 8)
    quantizer = X86InductorQuantizer().set_global(QAT).set_module_name_qconfig("block2", PTQ)
    prepared = _prepare(quantizer, x)
    block1 = _observer_modules(prepared, "block1.0")
    block2 = _observer_modules(prepared, "block2.0")
    assert block1 and all(isinstance(m, FakeQuantizeBase) for m in block1)
    assert block2 and all(isinstance(m, ObserverBase) for m in block2)
    converted = convert_pt2e(prepared)
    assert sum("quantize_per_tensor" in str(n.target) for n in converted.graph.nodes) >= 4


@pytest.mark.slow
def test_qat_model_lowers_to_onednn_int8():
    x = torch.randn(4, 3, 8, 8)
    prepared = _prepare(X86InductorQuantizer().set_global(QAT), x)
    expected = prepared(x)
    converted = convert_pt2e(prepared)
    compiled = compile_x86(converted, (x,))
    assert compiled.kernels.int8["onednn.qconv_pointwise"] == 2
    assert compiled.kernels.int8["onednn.qlinear_pointwise"] == 1
    assert sqnr(expected, compiled(x)) >= 25
