"""Every lowering refuses pt2e's affine (blockwise) ops with a clear error, before doing any work.

No backend here has kernels for per-group int4 weights, per-token activations or
per-channel float8; each entry point must name the node, say what it quantizes and
point to the path that does lower it, while the converted model still runs eagerly.
"""

from __future__ import annotations

import re

import pytest
import torch
from support.numerics import sqnr
from support.reference_quantizer import LinearSpecQuantizer

import lowering
from observers import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
    MappingType,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    PerGroup,
    PerToken,
)
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import UnsupportedOperationError
from pt2e.quantizer import QuantizationSpec

GROUP_W = QuantizationSpec(
    dtype=torch.int8, quant_min=-8, quant_max=7, qscheme=None,
    observer_or_fake_quant_ctr=AffineQuantizedMinMaxObserver.with_args(
        mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(16),
        quant_min=-8, quant_max=7))
TOKEN_ACT = QuantizationSpec(
    dtype=torch.int8, qscheme=None, is_dynamic=True,
    observer_or_fake_quant_ctr=AffineQuantizedPlaceholderObserver.with_args(
        mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.int8, granularity=PerToken(), is_dynamic=True))
F8_ACT = QuantizationSpec(dtype=torch.float8_e4m3fn, quant_min=-448, quant_max=448,
                          qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=MinMaxObserver)
F8_W = QuantizationSpec(dtype=torch.float8_e4m3fn, quant_min=-448, quant_max=448, ch_axis=0,
                        qscheme=torch.per_channel_symmetric, observer_or_fake_quant_ctr=PerChannelMinMaxObserver)


SCHEMES = {
    "int4_group_weight": (None, GROUP_W, r"per-group/blockwise weights \(torch.int8 in \[-8, 7\], "
                          r"block_size=\[1, 16\]\).*Int4WeightOnlyConfig"),
    "per_token_dynamic_act": (TOKEN_ACT, GROUP_W, r"dynamic per-token/blockwise activations.*is_dynamic=True"),
    "float8_per_channel": (F8_ACT, F8_W, r"float8 blockwise/per-channel values"),
}


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 32)
    out = {}
    for name, (act, weight, _) in SCHEMES.items():
        prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), LinearSpecQuantizer(act, weight))
        prepared(x)
        out[name] = (convert_pt2e(prepared), model, x)
    return out


ENTRY_POINTS = {
    "compile_x86": lambda gm, x: lowering.compile_x86(gm, (x,)),
    "lower_pt2e_quantized_to_x86": lambda gm, x: lowering.lower_pt2e_quantized_to_x86(gm, (x,)),
    "export_onnx": lambda gm, x: lowering.export_onnx(gm, (x,)),
    "to_openvino": lambda gm, x: lowering.to_openvino(gm, (x,)),
    "to_executorch": lambda gm, x: lowering.to_executorch(gm, (x,)),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_lowering_refuses_affine_ops_clearly(entry, scheme, converted):
    gm, _, x = converted[scheme]
    with pytest.raises(UnsupportedOperationError) as info:
        ENTRY_POINTS[entry](gm, x)
    message = str(info.value)
    assert message.startswith(f"{entry} cannot lower pt2e's affine quantize/dequantize ops")
    assert "node 'dequantize_affine" in message and "feeding node 'linear'" in message
    assert re.search(SCHEMES[scheme][2], message), message


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_refused_model_still_runs_eagerly(scheme, converted):
    gm, model, x = converted[scheme]
    assert sqnr(model(x), gm(x)) > 15


def test_check_passes_graphs_without_affine_ops():
    gm = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),)).module()
    lowering.contract.check_affine_ops(gm, "compile_x86")  # nothing to refuse
