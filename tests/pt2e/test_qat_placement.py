"""QAT and PTQ place quantize/dequantize identically for the same config (issue 16).

Conv1d -> BN -> ReLU whose consumer (adaptive average pool) is not quantized: the
pattern's output stays float in both; torchao's x86 quantizer quantizes it in QAT
only (a workaround for its QAT pattern matcher).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from support.numerics import count_targets
from torch import nn

from pt2e import convert_pt2e, move_exported_model_to_eval, prepare_pt2e, prepare_qat_pt2e
from quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)


class ConvBnReluPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.pool = nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8), nn.AdaptiveAvgPool1d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x))))


QUANTIZERS = {
    "x86": lambda qat: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=qat)),
    "xnnpack": lambda qat: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)),
}
# (quantize_per_tensor, dequantize_per_tensor, dequantize_per_channel) after convert
EXPECTED = {"x86": (1, 1, 1), "xnnpack": (2, 2, 1)}


def _qdq_counts(qat: bool, make_quantizer) -> tuple[int, int, int]:
    x = torch.randn(4, 3, 16)
    model = ConvBnReluPool().train() if qat else ConvBnReluPool().eval()
    gm = torch.export.export(model, (x,)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(gm, make_quantizer(qat))
        prepared(x)
        if qat:
            prepared = move_exported_model_to_eval(prepared)
        counts = count_targets(convert_pt2e(prepared))
    return (counts.get("quantize_per_tensor.default", 0), counts.get("dequantize_per_tensor.default", 0),
            counts.get("dequantize_per_channel.default", 0))


@pytest.mark.parametrize("qat", [False, True], ids=["ptq", "qat"])
@pytest.mark.parametrize("backend", sorted(QUANTIZERS))
def test_conv_bn_relu_before_an_unquantized_op_has_the_same_qdq_in_qat_and_ptq(backend, qat):
    assert _qdq_counts(qat, QUANTIZERS[backend]) == EXPECTED[backend]
