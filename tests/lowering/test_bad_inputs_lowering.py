"""The bad-input catalogue of issue 16 (lowering side): refused up front, clearly, and quietly."""

from __future__ import annotations

import warnings

import pytest
import support.x86_models as M
import torch

from lowering import (
    X86LoweringError,
    check_x86_graph,
    compile_x86,
    export_onnx,
    lower_pt2e_quantized_to_x86,
    to_executorch,
    to_openvino,
)
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import ArgumentValueError, PipelineStateError
from pt2e.quantizer import QuantizationConfig, QuantizationSpec
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

CFG = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())


def _prepared(model, args, config=CFG):
    return prepare_pt2e(torch.export.export(model.eval(), args).module(),
                        X86InductorQuantizer().set_global(config))


def _linear_relu():
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), (torch.randn(2, 8),)


@pytest.mark.parametrize("lower", [
    pytest.param(lambda m, a: compile_x86(m, a), id="compile_x86"),
    pytest.param(lambda m, a: compile_x86(m), id="compile_x86-lazy"),
    pytest.param(lower_pt2e_quantized_to_x86, id="lower_pt2e_quantized_to_x86"),
    pytest.param(to_executorch, id="to_executorch"),
    pytest.param(export_onnx, id="export_onnx"),
    pytest.param(to_openvino, id="to_openvino"),
])
def test_every_lowering_refuses_a_prepared_but_unconverted_model(lower):
    model, args = _linear_relu()
    prepared = _prepared(model, args)
    prepared(*args)
    with pytest.raises(PipelineStateError, match=r"prepared but not converted .*convert_pt2e"):
        lower(prepared, args)


def _int16_config():
    act = QuantizationSpec(dtype=torch.int16, quant_min=-32768, quant_max=32767,
                           qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=CFG.input_activation.observer_or_fake_quant_ctr)
    return QuantizationConfig(act, act, CFG.weight, CFG.bias, CFG.is_qat)


@pytest.mark.parametrize("model, shape", [
    pytest.param(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), (1, 3, 8, 8), id="conv"),
    pytest.param(torch.nn.Sequential(torch.nn.Linear(4, 4)), (2, 4), id="linear"),
])
def test_int16_activations_are_refused_before_inductor_naming_the_supported_specs(model, shape):
    args = (torch.randn(*shape),)
    prepared = _prepared(model, args, _int16_config())
    prepared(*args)
    converted = convert_pt2e(prepared)
    converted(*args)  # runs eagerly: the problem is the x86 kernels only
    with pytest.raises(X86LoweringError, match=r"reads torch.int16 activations.*take .*uint8"):
        compile_x86(converted, args)
    with pytest.raises(X86LoweringError, match="module '0'"):
        check_x86_graph(converted)


def test_default_x86_specs_pass_the_check():
    model, args = _linear_relu()
    prepared = _prepared(model, args)
    prepared(*args)
    check_x86_graph(convert_pt2e(prepared))  # raises on failure


@pytest.mark.slow
def test_compiled_model_at_a_new_batch_is_a_clear_error_and_compiles_quietly():
    model, args = M.MLP().eval(), M.example_inputs("MLP")
    prepared = _prepared(model, args)
    prepared(*args)
    converted = convert_pt2e(prepared)
    user_filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = compile_x86(converted, args)
    assert compiled.kernels.int8["onednn.qlinear_pointwise"] == 3
    noise = [str(w.message) for w in caught
             if "copy construct" in str(w.message) or "script_method" in str(w.message)]
    assert noise == []
    assert warnings.filters == user_filters  # the user's filters are left alone
    with pytest.raises(ArgumentValueError, match=r"input 'x' has size 3 in dim 0.*torch\.export\.Dim"):
        compiled(torch.randn(3, 32))


@pytest.mark.slow
def test_compiled_model_exported_with_a_dynamic_batch_runs_at_new_batches():
    model, (x,) = M.MLP().eval(), M.example_inputs("MLP")
    gm = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(CFG))
    prepared(x)
    converted = convert_pt2e(prepared)
    compiled = compile_x86(converted, (x,))
    for batch in (1, 5):
        y = torch.randn(batch, 32)
        assert torch.allclose(compiled(y), converted(y), atol=0.05)


class KVCache(torch.nn.Module):
    """Writes a linear's output into a buffer (a KV cache), then reads the cache."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Linear(16, 16)
        self.o = torch.nn.Linear(16, 16)
        self.register_buffer("cache", torch.zeros(8, 16))

    def forward(self, x):
        self.cache[:4].copy_(self.k(x))
        return self.o(self.cache)


def _kv_converted():
    x = torch.randn(4, 16)
    model = KVCache().eval()
    prepared = _prepared(model, (x,))
    prepared(x)
    converted = convert_pt2e(prepared)
    converted.cache.zero_()  # start from the empty cache, as the eager model does
    return model, converted, x


def test_kv_cache_is_observed_after_the_write_and_never_frozen_to_a_constant():
    # the cache was observed before the write (all zeros) and folded into an int8
    # constant: the second linear read a frozen empty cache (off by ~1.1)
    model, converted, x = _kv_converted()
    assert any(n.target == torch.ops.aten.copy_.default for n in converted.graph.nodes)
    with torch.no_grad():
        assert float((converted(x) - model(x)).abs().max()) < 0.1


@pytest.mark.slow
def test_kv_cache_write_keeps_the_mutation_and_gets_int8_kernels():
    model, converted, x = _kv_converted()
    compiled = compile_x86(converted, (x,))
    assert compiled.kernels.int8["onednn.qlinear_pointwise"] == 2, compiled.kernels
    with torch.no_grad():
        assert float((compiled(x) - model(x)).abs().max()) < 0.1


class _ReluResidual(torch.nn.Module):
    """``x + relu(linear(x))`` and a second linear feeding a plain residual."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        h = x + torch.relu(self.fc(x))
        return h + self.fc2(h)


@pytest.mark.slow
def test_unary_then_add_linear_runs_float_with_a_warning_instead_of_crashing_inductor():
    # torch 2.13's qlinear post-op fusion asserts (bare AssertionError) on other + relu(qlinear)
    x = torch.randn(3, 8)
    prepared = _prepared(_ReluResidual(), (x,))
    prepared(x)
    converted = convert_pt2e(prepared)
    before = str(converted.graph)
    with pytest.warns(UserWarning, match=r"'linear'.*stay float.*relu\(x \+ linear\(x\)\)"):
        compiled = compile_x86(converted, (x,))
    assert str(converted.graph) == before  # the caller's model is not rewritten
    assert dict(compiled.kernels.int8) == {"onednn.qlinear_pointwise.binary": 1}  # fc2 + add, int8
    assert dict(compiled.kernels.float) == {"addmm": 1}  # fc runs fp32
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), converted(x), atol=0.05, rtol=0.05)
