"""calibrate() and quantization_report() on real prepared/converted models."""

from __future__ import annotations

import torch
from support.models import MLP, export
from support.reference_quantizer import ReferenceQuantizer

from pt2e import calibrate, convert_pt2e, prepare_pt2e, quantization_report
from pt2e.quantizer import module_stack


def test_calibrate_feeds_every_batch_and_observers_see_data(capsys, monkeypatch):
    monkeypatch.setattr("pt2e.progress.is_terminal", lambda: True)  # bars on terminals only
    x = torch.randn(4, 16)
    prepared = prepare_pt2e(export(MLP((16, 32, 8)), x), ReferenceQuantizer())
    batches = [torch.randn(4, 16) for _ in range(6)]
    assert calibrate(prepared, batches) == 6
    assert "calibrating" in capsys.readouterr().err  # the progress bar
    converted = convert_pt2e(prepared)  # would raise if an observer had seen nothing
    assert quantization_report(converted).quantize > 0


def test_report_lists_layers_left_float_with_their_module_path():
    x = torch.randn(4, 16)

    def not_last_layer(node):
        return all(path != "net.2" for path, _ in module_stack(node))

    prepared = prepare_pt2e(export(MLP((16, 32, 8)), x), ReferenceQuantizer(only=not_last_layer))
    calibrate(prepared, [x], progress=False)
    report = quantization_report(convert_pt2e(prepared))
    assert report.quantized_ops == {"aten.linear.default": 1}
    assert len(report.float_ops) == 1 and "module 'net.2'" in report.float_ops[0]
    assert "compute ops left in float: 1" in str(report)


@torch.library.custom_op("pt2e_report_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_double.register_fake
def _(x):
    return torch.empty_like(x)


class Unpatterned(torch.nn.Module):
    """Linears around ops no quantizer has a pattern for, and a torch.cond."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.out = (torch.nn.Linear(16, 16), torch.nn.LayerNorm(16),
                                        torch.nn.Linear(16, 16))
        self.branch = torch.nn.Linear(16, 16)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc(x))
        h = torch.softmax(self.norm(h), dim=-1)
        h = self.out(torch.ops.pt2e_report_test.double(h))
        return torch.cond(h.sum() > 0, lambda t: self.branch(t).relu(), lambda t: t.cos(), (h,))


def test_report_lists_every_op_that_stayed_float():
    from quantizers import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
        x86_needs_reduce_range,
    )

    x = torch.randn(4, 16)
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range()))
    prepared = prepare_pt2e(torch.export.export(Unpatterned().eval(), (x,)).module(), quantizer)
    calibrate(prepared, [x], progress=False)
    report = quantization_report(convert_pt2e(prepared))
    # fc and out, and the linear of the cond branch calibration took (bodies are quantized)
    assert report.quantized_ops == {"aten.linear.default": 3}
    others = {r.op for r in report.other_float_ops}
    assert {"pt2e_report_test.double.default", "aten.gelu.default",
            "aten.layer_norm.default"} <= others
    assert any("softmax" in op for op in others)
    # the branch's ops are named after their branch; the branch never taken stays float
    branch = {r.node: r for r in report.branch_ops}
    assert "true_graph_0.linear" in branch and branch["true_graph_0.linear"].is_int8
    assert "false_graph_0.cos" in branch and not branch["false_graph_0.cos"].is_int8
    assert "control-flow body 'false_graph_0'" in branch["false_graph_0.cos"].reason
    text = str(report)
    assert "compute ops left in float: 0" in text and "other ops left in float:" in text
    assert "aten.gelu.default: 1 (gelu)" in text


def test_post_ops_fused_into_an_int8_kernel_are_not_reported_float():
    """conv -> relu -> quantize runs as one int8 kernel; a layer_norm in the same place does not."""
    from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(8, 8) for _ in range(3))
            self.ln = torch.nn.LayerNorm(8)

        def forward(self, x):
            y = self.fc2(torch.relu(self.fc1(x)))     # relu fused into fc1's int8 kernel
            return self.fc3(self.ln(y))                # layer_norm runs in float

    x = torch.randn(4, 8)
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(export(M(), x), q)
    prepared(x)
    report = quantization_report(convert_pt2e(prepared))
    assert report.quantized_ops["aten.linear.default"] == 3
    assert [r.op for r in report.other_float_ops] == ["aten.layer_norm.default"]
