"""torch.compile(fullgraph=True) of quantized models: same outputs, and the quantized kernel is in the code."""

from __future__ import annotations

import pytest
import torch
from support.numerics import sqnr
from torch._inductor.utils import run_and_get_code

from quantizers.eager import (
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)
from tutorials.quick_start import ToyLinearModel

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config", [
    pytest.param(Int4WeightOnlyConfig(group_size=32), id="int4"),
    pytest.param(Int8WeightOnlyConfig(), id="int8_weight_only"),
    pytest.param(Int8DynamicActivationInt8WeightConfig(), id="int8_dynamic"),
])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@torch.no_grad()
def test_compiled_fullgraph_matches_eager_and_runs_the_int_kernel(config, dtype):
    model = ToyLinearModel(64, 32, 64).eval().to(dtype)
    quantize_(model, config)
    x = torch.randn(2, 64, dtype=dtype)
    eager = model(x).float()
    compiled, code = run_and_get_code(torch.compile(model, fullgraph=True), x)
    # Inductor fuses the casts and the activation quantization its own way: bf16 roundings,
    # and (int8 dynamic) an int8 activation rounded the other way now and then
    assert sqnr(eager, compiled) >= 40.0
    op = model.linear1.weight._kernel().op.split(".")[-1]
    assert op in "\n".join(code), f"{op} not in the compiled code"
