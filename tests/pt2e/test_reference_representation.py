"""use_reference_representation=True: plain integer arithmetic, same numbers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from support.models import MLP, SmallCNN, export
from support.reference_quantizer import ReferenceQuantizer

from pt2e import convert_pt2e, prepare_pt2e, reference_representation_rewrite
from pt2e.ops import QD


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


# --- add and add-relu: integers straight from integers ------------------------------------------

_ADD_SCRIPT = r'''
import json, sys
import torch
import torch.ao.quantization.fx._decomposed
QD = torch.ops.quantized_decomposed
if sys.argv[1] == "torchao":
    from torchao.quantization.pt2e.reference_representation_rewrite import (
        reference_representation_rewrite)
else:
    from pt2e import reference_representation_rewrite

class Add(torch.nn.Module):
    def __init__(self, relu):
        super().__init__()
        self.relu = relu
    def forward(self, x, y):
        dq = QD.dequantize_per_tensor.default
        s = torch.add(dq(x, 0.05, 3, -128, 127, torch.int8), dq(y, 0.02, -5, -128, 127, torch.int8))
        if self.relu:
            s = torch.relu(s)
        return QD.quantize_per_tensor.default(s, 0.07, 2, -128, 127, torch.int8)

g = torch.Generator().manual_seed(0)
x, y = (torch.randint(-128, 128, (256,), dtype=torch.int8, generator=g) for _ in range(2))
out = {}
for relu in (False, True):
    gm = reference_representation_rewrite(torch.export.export(Add(relu), (x, y)).module())
    out[str(relu)] = {"qd_left": sum("quantized_decomposed" in str(n.target) for n in gm.graph.nodes),
                      "y": gm(x, y).tolist()}
print(json.dumps(out))
'''


def _add_answers(package):
    done = subprocess.run([sys.executable, "-c", _ADD_SCRIPT, package], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _closed_form_add(x, y, relu):
    """The q/dq graph's answer: dequantize, add (, relu), quantize."""
    s = (x.float() - 3) * 0.05 + (y.float() + 5) * 0.02
    if relu:
        s = s.clamp(min=0)
    return torch.clamp(torch.round(s / 0.07) + 2, -128, 127).to(torch.int8)


@pytest.mark.slow
def test_integer_add_equals_torchaos_and_add_relu_stays_within_a_step_of_qdq():
    pytest.importorskip("torchao")
    ours, theirs = _add_answers("pt2e"), _add_answers("torchao")
    assert ours["False"]["qd_left"] == ours["True"]["qd_left"] == 0
    assert ours["False"]["y"] == theirs["False"]["y"]  # torchao's add rounds as ours does
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(-128, 128, (256,), dtype=torch.int8, generator=g) for _ in range(2))
    for relu in (False, True):
        got = torch.tensor(ours[str(relu)]["y"], dtype=torch.int8)
        assert (got.int() - _closed_form_add(x, y, relu).int()).abs().max() <= 1


def test_add_relu_rewrite_clamps_at_the_output_zero_point():
    class AddRelu(torch.nn.Module):
        def forward(self, x, y):
            dq = QD.dequantize_per_tensor.default
            s = torch.relu(dq(x, 0.1, 0, -128, 127, torch.int8) + dq(y, 0.1, 0, -128, 127, torch.int8))
            return QD.quantize_per_tensor.default(s, 0.1, -10, -128, 127, torch.int8)

    x = torch.tensor([-100, 5, 100], dtype=torch.int8)
    y = torch.tensor([-20, 5, 100], dtype=torch.int8)
    gm = reference_representation_rewrite(torch.export.export(AddRelu(), (x, y)).module())
    assert not any("quantized_decomposed" in str(n.target) for n in gm.graph.nodes)
    # relu in the integer domain: nothing below the zero point; 200 saturates at 127
    assert gm(x, y).tolist() == [-10, 0, 127]
