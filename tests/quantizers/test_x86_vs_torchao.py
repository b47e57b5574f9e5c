"""Our converted graph matches torchao's X86InductorQuantizer on models torchao handles.

torchao runs in a subprocess: importing its X86 quantizer patches Inductor's passes.
Both sides use MinMax observers so the qparams are deterministic.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import support.x86_models as M
import torch

from observers import MinMaxObserver, PerChannelMinMaxObserver
from pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from pt2e.quantizer import QuantizationConfig, QuantizationSpec
from quantizers import X86InductorQuantizer

pytestmark = pytest.mark.slow
MODELS = ["SmallCNN", "MLP", "TransformerBlock"]
ROOT = pathlib.Path(__file__).resolve().parents[2]

TORCHAO_SCRIPT = r"""
import json, sys, torch
from collections import Counter
sys.path.insert(0, sys.argv[2])
import support.x86_models as M
from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer
act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                       observer_or_fake_quant_ctr=MinMaxObserver)
w = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                     ch_axis=0, observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
cfg = QuantizationConfig(act, act, w, None)
out = {}
for name in sys.argv[3:]:
    model = getattr(M, name)().eval()
    model.load_state_dict(torch.load(f"{sys.argv[1]}/{name}.pt"))
    args = M.example_inputs(name)
    p = prepare_pt2e(torch.export.export(model, args).module(), X86InductorQuantizer().set_global(cfg))
    p(*args)
    c = convert_pt2e(p)
    torch.save(c(*args), f"{sys.argv[1]}/{name}.out.pt")
    out[name] = dict(Counter(n.target.__name__ for n in c.graph.nodes
                             if n.op == "call_function" and "quantized_decomposed" in str(n.target)))
print(json.dumps(out))
"""


def _config() -> QuantizationConfig:
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=MinMaxObserver)
    w = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                         ch_axis=0, observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    return QuantizationConfig(act, act, w, None)


@pytest.fixture(scope="module")
def torchao_results(tmp_path_factory):
    pytest.importorskip("torchao")
    tmp = tmp_path_factory.mktemp("torchao")
    for name in MODELS:
        torch.manual_seed(0)
        torch.save(getattr(M, name)().state_dict(), tmp / f"{name}.pt")
    proc = subprocess.run(
        [sys.executable, "-c", TORCHAO_SCRIPT, str(tmp), str(ROOT / "tests"), *MODELS],
        capture_output=True, text=True, cwd=str(ROOT), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MODELS)
def test_same_qdq_counts_and_outputs_as_torchao(name, torchao_results):
    tmp, counts = torchao_results
    model = getattr(M, name)().eval()
    model.load_state_dict(torch.load(tmp / f"{name}.pt"))
    args = M.example_inputs(name)
    prepared = prepare_pt2e(torch.export.export(model, args).module(),
                            X86InductorQuantizer().set_global(_config()))
    prepared(*args)
    converted = convert_pt2e(prepared)
    ours = {}
    for n in converted.graph.nodes:
        if n.op == "call_function" and "quantized_decomposed" in str(n.target):
            ours[n.target.__name__] = ours.get(n.target.__name__, 0) + 1
    assert ours == counts[name]
    torch.testing.assert_close(converted(*args), torch.load(tmp / f"{name}.out.pt"), atol=1e-5, rtol=0)
