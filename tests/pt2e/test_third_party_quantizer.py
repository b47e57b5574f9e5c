"""A quantizer written against torchao's classes (ExecuTorch's XNNPACKQuantizer) works with our flow.

Annotations are read by field, so torchao's ``QuantizationAnnotation`` / spec classes
and torchao's observers pass through ``prepare_pt2e`` / ``convert_pt2e`` unchanged.
torchao is imported here only as the reference to compare against.
"""

from __future__ import annotations

import copy

import pytest
import torch
from support.models import SmallCNN, export
from support.numerics import count_targets

from pt2e import convert_pt2e, prepare_pt2e

xnn = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")


def _quantizer():
    q = xnn.XNNPACKQuantizer()
    q.set_global(xnn.get_symmetric_quantization_config(is_per_channel=True))
    return q


def test_executorch_xnnpack_quantizer_matches_torchao_flow():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as ao_prepare

    torch.manual_seed(0)
    model = SmallCNN().eval()
    calib = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    gm = export(model, calib[0])

    ours = prepare_pt2e(copy.deepcopy(gm), _quantizer())
    theirs = ao_prepare(copy.deepcopy(gm), _quantizer())
    for x in calib:
        ours(x)
        theirs(x)
    ours, theirs = convert_pt2e(ours), ao_convert(theirs)

    qdq = ("quantize_per_tensor.default", "dequantize_per_tensor.default",
           "dequantize_per_channel.default")
    ours_counts, theirs_counts = count_targets(ours), count_targets(theirs)
    assert {k: ours_counts.get(k, 0) for k in qdq} == {k: theirs_counts.get(k, 0) for k in qdq}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
