"""Quantized models survive torch.save/torch.load (whole model and state_dict), and are small on disk."""

from __future__ import annotations

import io

import pytest
import torch

from observers.errors import UnsupportedOperationError
from quantizers.eager import (
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)
from tutorials.quick_start import ToyLinearModel, file_size_mb

CONFIGS = [
    pytest.param(Int4WeightOnlyConfig(group_size=32), id="int4"),
    pytest.param(Int8WeightOnlyConfig(), id="int8_weight_only"),
    pytest.param(Int8DynamicActivationInt8WeightConfig(), id="int8_dynamic"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def _roundtrip(obj, **load_kwargs):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, **load_kwargs)


def _quantized(config, dtype=torch.float32):
    model = ToyLinearModel(64, 32, 64).eval().to(dtype)
    quantize_(model, config)
    return model


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_model_roundtrip(config, dtype):
    model = _quantized(config, dtype)
    x = torch.randn(2, 64, dtype=dtype)
    loaded = _roundtrip(model, weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert repr(loaded.linear1) == repr(model.linear1)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_roundtrip_with_weights_only(config):
    model = _quantized(config)
    x = torch.randn(2, 64)
    state = _roundtrip(model.state_dict(), weights_only=True)
    assert type(state["linear1.weight"]) is type(model.linear1.weight)
    # into a freshly quantized model: copy_ (the default) and assign=True
    for assign in (False, True):
        target = _quantized(config)
        target.load_state_dict(state, assign=assign)
        assert torch.equal(target(x), model(x))


def test_loading_a_quantized_state_dict_into_a_float_model_is_refused():
    state = _quantized(Int8WeightOnlyConfig()).state_dict()
    # load_state_dict reports our error inside its own RuntimeError
    with pytest.raises(RuntimeError, match="cannot copy a quantized Int8WeightTensor into a float tensor"):
        ToyLinearModel(64, 32, 64).load_state_dict(state)


def test_int4_packed_for_another_cpu_is_refused_on_load():
    model = _quantized(Int4WeightOnlyConfig(group_size=32))
    model.linear1.weight.packed_for = "SOME_OTHER_ISA"
    with pytest.raises(UnsupportedOperationError, match="packed for SOME_OTHER_ISA CPU kernels"):
        _roundtrip(model.state_dict(), weights_only=True)


@pytest.mark.parametrize("group_size,expected_ratio", [(128, 0.25 * 1.0625), (32, 0.25 * 1.25)])
def test_toy_model_int4_file_is_a_quarter_of_bf16_plus_scales(group_size, expected_ratio):
    """Seed's ToyLinearModel(1024, 1024, 1024): int4 values are 1/4 of bf16; each group adds a
    bf16 scale and zero point (4 bytes per group_size/2 bytes: +6.25% at 128, +25% at 32)."""
    bf16 = ToyLinearModel(1024, 1024, 1024).eval().to(torch.bfloat16)
    bf16_mb = file_size_mb(bf16)
    quantize_(bf16, Int4WeightOnlyConfig(group_size=group_size))
    ratio = file_size_mb(bf16) / bf16_mb
    assert ratio == pytest.approx(expected_ratio, rel=0.01)
    if group_size == 128:  # the bar: within 10% of a quarter
        assert abs(ratio - 0.25) <= 0.1 * 0.25
