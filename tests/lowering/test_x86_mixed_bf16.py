"""int8-mixed-bf16 (compile_x86(mixed_bf16=True)): int8 kernels still run, the float ops run
in bfloat16 and are reported; refused on a CPU without native bf16."""

from __future__ import annotations

import pytest
import support.x86_models as M
import torch
from support.numerics import sqnr

import lowering.x86_inductor as x86
from lowering import compile_x86
from pt2e.cpu import cpu_has_bf16
from pt2e.errors import UnsupportedOperationError
from pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

CFG = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())
# bfloat16 keeps 8 bits of mantissa: the float ops add error on top of int8's
MIN_SQNR_DB = 25.0


def test_mixed_bf16_is_refused_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(x86, "cpu_has_bf16", lambda: False)
    with pytest.raises(UnsupportedOperationError, match="neither AVX512-BF16 nor AMX") as err:
        compile_x86(torch.nn.Linear(4, 4), mixed_bf16=True)
    assert "without mixed_bf16" in str(err.value)  # says how to fix it
    assert isinstance(err.value, NotImplementedError)


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (the refusal is tested above)")
def test_mixed_bf16_runs_int8_kernels_with_bf16_float_ops():
    model, args = M.TransformerBlock().eval(), M.example_inputs("TransformerBlock")
    prepared = prepare_pt2e(torch.export.export(model, args).module(),
                            X86InductorQuantizer().set_global(CFG))
    prepared(*args)
    converted = convert_pt2e(prepared)
    (x,) = args
    before = x.clone()

    compiled = compile_x86(converted, args, mixed_bf16=True)
    report = compiled.report
    assert report.int8["onednn.qlinear_pointwise"] >= 4, str(report)
    assert report.bf16["scaled_dot_product_attention"] == 1, str(report)  # attention in bf16
    assert not report.float, str(report)  # no fp32 compute call left
    assert any(r.reason == "int8 in, bf16 out" for r in report.int8_records), report.summary()
    assert "bf16:" in str(report)
    out = compiled(x)
    assert torch.equal(x, before)
    with torch.no_grad():
        assert sqnr(model(x), out.float()) >= MIN_SQNR_DB


@pytest.mark.slow
def test_fp32_lowering_reports_no_bf16_ops():
    model, args = M.TransformerBlock().eval(), M.example_inputs("TransformerBlock")
    prepared = prepare_pt2e(torch.export.export(model, args).module(),
                            X86InductorQuantizer().set_global(CFG))
    prepared(*args)
    report = compile_x86(convert_pt2e(prepared), args).report
    assert report.int8["onednn.qlinear_pointwise"] >= 4, str(report)
    assert not report.bf16 and report.float["scaled_dot_product_attention"] == 1, str(report)
