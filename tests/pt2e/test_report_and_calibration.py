"""calibrate() and quantization_report() on real prepared/converted models."""

from __future__ import annotations

import torch
from support.models import MLP, export
from support.reference_quantizer import ReferenceQuantizer

from pt2e import calibrate, convert_pt2e, prepare_pt2e, quantization_report
from pt2e.quantizer import module_stack


def test_calibrate_feeds_every_batch_and_observers_see_data(capsys):
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
