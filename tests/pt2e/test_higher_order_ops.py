"""torch.cond branches, while_loop bodies and scan combine functions are annotated and quantized
like top-level code (torchao prepares/converts while_loop and scan bodies the same way), and the
report covers them. Numbers are checked against the float model and the closed-form q/dq count."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch._higher_order_ops.scan import scan
from torch._higher_order_ops.while_loop import while_loop

from pt2e import convert_pt2e, prepare_pt2e, quantization_report
from pt2e.numeric_debugger import sqnr
from pt2e.ops import DEQUANTIZE_OPS, QD, QUANTIZE_OPS
from pt2e.prepare import control_flow_bodies, observer_nodes
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

# a quantized linear on 4 features: int8 per-channel weights, uint8 activations
MIN_SQNR_DB = 25.0


class Cond(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: self.a(t).relu(), lambda t: self.b(t), (x,))


class While(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        i = torch.zeros((), dtype=torch.int64)
        return while_loop(lambda i, t: i < 3, lambda i, t: (i + 1, self.a(t)), (i, x))[1]


class Scan(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        def step(carry, row):
            y = self.a(row) + carry
            return y, y.clone()

        return scan(step, torch.zeros(8), x)[1]


# bodies that hold a linear, each quantized as: activation q/dq + weight q/dq (per channel)
CASES = {"cond": (Cond, ["true_graph_0", "false_graph_0"]),
         "while_loop": (While, ["while_loop_body_graph_0"]),
         "scan": (Scan, ["scan_combine_graph_0"])}


def _quantize(make, calib):
    torch.manual_seed(0)
    model = make().eval()
    gm = torch.export.export(model, (calib[0],)).module()
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config()))
    for x in calib:
        prepared(x)
    return model, prepared


def _qdq(gm):
    return [n.target for n in gm.graph.nodes if n.target in QUANTIZE_OPS | DEQUANTIZE_OPS]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bodies_are_observed_converted_and_reported(case):
    make, bodies = CASES[case]
    x = torch.randn(4, 8)
    model, prepared = _quantize(make, [x, -x])  # -x takes cond's other branch
    body_modules = dict(control_flow_bodies(prepared))
    assert set(bodies) <= set(body_modules)
    for name in bodies:
        assert len(observer_nodes(body_modules[name])) == 2, name  # input activation, weight
    converted = convert_pt2e(prepared)
    converted_bodies = dict(control_flow_bodies(converted))
    for name in bodies:
        assert sorted(map(str, _qdq(converted_bodies[name]))) == sorted(map(str, [
            QD.quantize_per_tensor.default, QD.dequantize_per_tensor.default,
            QD.quantize_per_channel.default, QD.dequantize_per_channel.default])), name
    for inp in (x, -x):
        assert sqnr(model(inp), converted(inp)) > MIN_SQNR_DB
    report = quantization_report(converted)
    int8 = {r.node for r in report.branch_ops if r.is_int8}
    assert int8 == {f"{name}.linear" for name in bodies}


def test_a_branch_calibration_never_took_stays_float(caplog):
    x = torch.rand(4, 8) + 0.1  # sum > 0: only the true branch runs
    model, prepared = _quantize(Cond, [x])
    with caplog.at_level(logging.WARNING, logger="pt2e.quantize_pt2e"):
        converted = convert_pt2e(prepared)
    assert "never ran control-flow body 'false_graph_0'" in caplog.text
    bodies = dict(control_flow_bodies(converted))
    assert _qdq(bodies["false_graph_0"]) == [] and len(_qdq(bodies["true_graph_0"])) == 4
    report = quantization_report(converted)
    assert {r.node: r.is_int8 for r in report.branch_ops if r.op == "aten.linear.default"} == {
        "true_graph_0.linear": True, "false_graph_0.linear": False}
    y = -x
    torch.testing.assert_close(converted(y), model(y))  # the float branch is exact
    assert sqnr(model(x), converted(x)) > MIN_SQNR_DB


def test_prepared_bodies_are_their_own_copies_of_the_observers():
    x = torch.randn(4, 8)
    _, prepared = _quantize(Cond, [x, -x])
    names = [str(n.target) for _, body in control_flow_bodies(prepared)
             for n in observer_nodes(body)]
    # each body numbers its observers from 0, as torchao's recursive prepare does
    assert names == ["activation_post_process_0", "activation_post_process_1"] * 2
    # a deep copy of the prepared model still converts (bodies are plain submodules)
    assert len(_qdq(dict(control_flow_bodies(convert_pt2e(copy.deepcopy(prepared))))[
        "true_graph_0"])) == 4


def test_qat_leaves_bodies_float_as_torchao_does():
    from pt2e import prepare_qat_pt2e

    x = torch.randn(4, 8)
    gm = torch.export.export(Cond(), (x,)).module()
    prepared = prepare_qat_pt2e(gm, X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)))
    assert all(observer_nodes(body) == [] for _, body in control_flow_bodies(prepared))
    prepared(x).sum().backward()  # trains: the bodies run as exported
