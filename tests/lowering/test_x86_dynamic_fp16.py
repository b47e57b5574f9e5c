"""get_x86_inductor_linear_dynamic_fp16_config: fp16 weights, compiled by Inductor into oneDNN fp16 linears."""

from __future__ import annotations

import pytest
import torch

from lowering import compile_x86
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import X86InductorQuantizer, get_x86_inductor_linear_dynamic_fp16_config

CONVERT = torch.ops.quantized_decomposed.convert_element_type.no_fuse


def _converted() -> tuple[torch.nn.Module, torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    q = X86InductorQuantizer().set_global(get_x86_inductor_linear_dynamic_fp16_config())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), q)
    prepared(x)
    return model, convert_pt2e(prepared), x


def test_converted_weight_is_cast_to_fp16_and_back_activations_stay_float():
    model, converted, x = _converted()
    casts = [n for n in converted.graph.nodes if n.target == CONVERT]
    # per linear: weight -> fp16 -> fp32, as torchao emits; no activation is touched
    assert [c.args[1] for c in casts] == [torch.float16, torch.float32] * 2
    assert all(c.args[0].op == "get_attr" for c in casts[::2])
    assert not any("quantize_per" in str(n.target) for n in converted.graph.nodes)
    # closed form: the linear layers run on the fp16-rounded weights
    w1, b1 = model[0].weight.half().float(), model[0].bias
    w2, b2 = model[2].weight.half().float(), model[2].bias
    expected = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)), w2, b2)
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_compile_x86_runs_onednn_fp16_linears():
    model, converted, x = _converted()
    compiled = compile_x86(converted, (x,))
    code = "\n".join(compiled.code)
    assert "torch.ops.onednn.linear_relu_dynamic_fp16.default(" in code
    assert "torch.ops.onednn.linear_dynamic_fp16.default(" in code
    assert compiled.kernels is not None and not compiled.kernels.float  # no float mm/addmm left
    torch.testing.assert_close(compiled(x), converted(x), rtol=1e-3, atol=1e-3)
