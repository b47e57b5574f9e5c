"""use_reference_representation=True: plain integer arithmetic, same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from support.models import MLP, SmallCNN, export
from support.reference_quantizer import ReferenceQuantizer

from pt2e import convert_pt2e, prepare_pt2e


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("make,shape", [(lambda: MLP((16, 32, 8)), (4, 16)),
                                        (SmallCNN, (2, 3, 16, 16))], ids=["mlp", "cnn"])
def test_reference_representation_matches_qdq(make, shape, per_channel):
    x = torch.randn(*shape)
    prepared = prepare_pt2e(export(make(), x), ReferenceQuantizer(per_channel=per_channel))
    prepared(x)
    qdq = convert_pt2e(copy.deepcopy(prepared))
    ref = convert_pt2e(prepared, use_reference_representation=True)
    targets = {str(n.target) for n in ref.graph.nodes if n.op == "call_function"}
    assert not any("quantized_decomposed" in t for t in targets)
    out_q, out_r = qdq(x), ref(x)
    # one output quantization step at most (float summation order differs)
    step = float(next(n for n in reversed(list(qdq.graph.nodes))
                      if "dequantize_per_tensor" in str(n.target)).args[1])
    assert (out_q - out_r).abs().max() <= step + 1e-6


def test_linear_accumulates_in_int32():
    x = torch.randn(4, 16)
    prepared = prepare_pt2e(export(MLP((16, 8)), x), ReferenceQuantizer())
    prepared(x)
    ref = convert_pt2e(prepared, use_reference_representation=True)
    mm = [n for n in ref.graph.nodes if n.target == torch.ops.aten.matmul.default]
    assert len(mm) == 1
    assert all(a.target == torch.ops.aten._to_copy.default or a.target == torch.ops.aten.sub.Tensor
               or a.target == torch.ops.aten.t.default for a in mm[0].args)
