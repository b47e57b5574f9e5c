"""Inductor x86 lowering: the oneDNN int8 kernels really run, numerics hold, inputs stay intact."""

from __future__ import annotations

import pytest
import support.x86_models as M
import torch
from support.numerics import sqnr

from lowering import compile_x86, lower_pt2e_quantized_to_x86
from pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

pytestmark = pytest.mark.slow
MIN_SQNR_DB = 30.0
# this CPU may lack VNNI: 7-bit activations keep oneDNN's u8*s8 products from saturating
CFG = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())


def quantized(name: str):
    model, args = getattr(M, name)().eval(), M.example_inputs(name)
    prepared = prepare_pt2e(torch.export.export(model, args).module(),
                            X86InductorQuantizer().set_global(CFG))
    prepared(*args)
    return model, convert_pt2e(prepared), args


@pytest.mark.parametrize("name, kernels", [
    pytest.param("SmallCNN", {"onednn.qconv_pointwise", "onednn.qconv2d_pointwise.binary",
                              "onednn.qlinear_pointwise", "max_pool2d (int8 loop)"}, id="cnn"),
    pytest.param("MLP", {"onednn.qlinear_pointwise"}, id="mlp"),
])
def test_compiled_model_runs_int8_kernels_within_sqnr(name, kernels):
    model, converted, args = quantized(name)
    compiled = compile_x86(converted, args)
    assert compiled.kernels is not None
    assert kernels <= set(compiled.kernels.int8), str(compiled.kernels)
    assert not compiled.kernels.float, str(compiled.kernels)
    with torch.no_grad():
        assert sqnr(model(*args), compiled(*args)) >= MIN_SQNR_DB


def test_compiled_model_never_writes_into_callers_tensors():
    # Inductor turns x + qlinear(x) into an in-place oneDNN sum into x's buffer
    _, converted, args = quantized("LinearAdd")
    (x,) = args
    before = x.clone()
    compiled = compile_x86(converted)
    out = compiled(x)
    assert "onednn.qlinear_pointwise.binary" in compiled.kernels.int8
    assert torch.equal(x, before)
    assert torch.allclose(out, converted(before), atol=1e-2)


def test_lower_pt2e_quantized_to_x86_returns_graph_with_onednn_ops():
    model, converted, args = quantized("MLP")
    lowered = lower_pt2e_quantized_to_x86(converted, args)
    targets = {str(n.target) for n in lowered.graph.nodes if n.op == "call_function"}
    assert any("onednn.qlinear_pointwise" in t for t in targets), targets
    with torch.no_grad():
        assert sqnr(model(*args), lowered(*args)) >= MIN_SQNR_DB


def test_code_capture_is_scoped_and_works_with_the_artifact_log_turned_on():
    # compile_x86 reads the code from Inductor's "output_code" logging artifact through a
    # handler that exists only while it compiles; a user's TORCH_LOGS setting is left alone
    from torch._inductor.codecache import output_code_log

    _, converted, args = quantized("MLP")
    before = (output_code_log.level, list(output_code_log.handlers))
    int8 = compile_x86(converted, args).kernels.int8
    assert int8["onednn.qlinear_pointwise"] > 0, int8
    assert (output_code_log.level, list(output_code_log.handlers)) == before

    torch._logging.set_logs(output_code=True)
    try:
        enabled = (output_code_log.level, list(output_code_log.handlers))
        assert compile_x86(converted, args).kernels.int8 == int8
        assert (output_code_log.level, list(output_code_log.handlers)) == enabled
    finally:
        torch._logging.set_logs()
