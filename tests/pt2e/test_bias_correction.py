"""Bias correction: the expected-error formula, checked independently, and the SQNR it buys."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pt2e import ArgumentValueError, convert_pt2e, prepare_pt2e
from pt2e.bias_correction import BiasCorrection
from pt2e.graph import get_attr_value
from pt2e.ops import QD
from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.support.numerics import sqnr

linear = torch.ops.aten.linear.default


def _data(n: int = 4, shift: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(32, 16, generator=g) + shift for _ in range(n)]   # large-mean inputs


def _quantize(gm: torch.fx.GraphModule, data: list[torch.Tensor]) -> torch.fx.GraphModule:
    # per-tensor weights: a coarse weight grid, so the weight error has a visible mean effect
    prepared = prepare_pt2e(copy.deepcopy(gm), XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=False)))
    for x in data:
        prepared(x)
    return convert_pt2e(prepared)


def _linear(gm: torch.fx.GraphModule) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.target == linear)


def _dequantized(node: torch.fx.Node) -> torch.Tensor:
    """Evaluate a dequantize node whose input is a constant (the int8 weight)."""
    args = [get_attr_value(a) if isinstance(a, torch.fx.Node) else a for a in node.args]
    return node.target(*args)


def test_correction_is_the_expected_error_formula() -> None:
    torch.manual_seed(0)
    m, data = nn.Linear(16, 8).eval(), _data()
    gm = torch.export.export(m, (data[0],)).module()
    q = _quantize(gm, data)
    lin = _linear(q)
    w_q = _dequantized(lin.args[1])                                   # W~
    dq_in = lin.args[0]                                               # dequantize(quantize(x))
    scale, zp, lo, hi, dtype = dq_in.args[1:6]
    x = torch.cat(data)
    x_q = QD.dequantize_per_tensor(QD.quantize_per_tensor(x, scale, zp, lo, hi, dtype), scale, zp, lo, hi, dtype)
    w, b = m.weight.detach(), m.bias.detach()
    # delta = E[W~ x~] - E[W x]: the bias term cancels
    delta = w_q @ x_q.mean(0) - w @ x.mean(0)
    old_bias = get_attr_value(lin.args[2]).clone()
    bc = BiasCorrection(gm, data)
    assert bc(q).modified
    new_bias = get_attr_value(_linear(q).args[2])
    torch.testing.assert_close(new_bias, old_bias - delta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(old_bias, b)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
        with torch.no_grad():
            self.body[0].weight[0] *= 20       # one wide row: a coarse per-tensor grid for the rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_bias_correction_improves_sqnr() -> None:
    torch.manual_seed(0)
    m, data = Chain().eval(), _data()
    gm = torch.export.export(m, (data[0],)).module()
    q = _quantize(gm, data)
    ref = torch.cat([m(x) for x in data]).detach()
    before = sqnr(ref, torch.cat([q(x) for x in data]))
    BiasCorrection(gm, data)(q)
    after = sqnr(ref, torch.cat([q(x) for x in data]))
    assert after > before + 3.0, (before, after)


def test_mismatched_float_model_is_a_clear_error() -> None:
    data = _data(1)
    q = _quantize(torch.export.export(Chain().eval(), (data[0],)).module(), data)
    other = torch.export.export(nn.Linear(16, 8).eval(), (data[0],)).module()
    with pytest.raises(ArgumentValueError, match="conv/linear layers"):
        BiasCorrection(other, data)(q)
