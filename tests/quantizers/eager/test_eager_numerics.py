"""Numerics of every quantized weight: the kernel against a dequantize-then-matmul reference, and SQNR vs float.

Two measurements, kept apart (as optimum-quanto's tests do):

* **kernel error**: the output against ``F.linear`` of the same activations
  (rounded to the dtype the kernel computes in) and ``weight.dequantize()``, in
  float32. Tolerance: ``|y - ref| <= 2**-7 * max|ref|`` where the kernel's output or
  inputs are bfloat16 (its output rounding alone is 2**-9 relative), ``1e-5 *
  max|ref|`` where it computes in float32/int32 -- a wrong layout or scale is off
  by ~100%.
* **quantization error**: SQNR of the output against the float model's, at least
  ``SQNR_FLOOR_DB`` (measured ~1 dB above each floor with these seeds: int4 g32
  21.6, g64 21.0, g128 20.1 dB; int8 weight-only 40-43 dB; int8 dynamic 38-41 dB).

Plus the stated cost of running an fp32 model's activations in bfloat16: SQNR of
that kernel's output against the exact fp32-activation reference >= 45 dB (52 dB
measured), i.e. 30 dB under the int4 error and 10 dB under the int8 error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.numerics import sqnr

from observers.errors import QuantizationConfigError
from quantizers.eager import (
    Int4WeightOnlyConfig,
    Int4WeightTensor,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicWeightTensor,
    Int8WeightOnlyConfig,
    Int8WeightTensor,
    MappingType,
    PerTensor,
    quantize_,
)
from quantizers.eager.kernels import candidates, quantize_activation

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
SQNR_FLOOR_DB = {"int4_g32": 20.5, "int4_g64": 20.0, "int4_g128": 19.0,
                 "int8_weight_only": 38.0, "int8_dynamic": 36.0}
VIA_BF16_FLOOR_DB = 45.0


def _data(dtype: torch.dtype, n: int = 96, k: int = 256, m: int = 8):
    w = (torch.randn(n, k) * 0.05).to(dtype)
    x = torch.randn(m, k).to(dtype)
    return w, x


def _tolerance(kernel, dtype: torch.dtype, ref: torch.Tensor) -> float:
    low = torch.bfloat16 in (dtype, kernel.compute_dtype_for(dtype), kernel.scale_dtype_for(dtype))
    return (2**-7 if low else 1e-5) * float(ref.abs().max())


def _check(y: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    err = float((y.float() - ref).abs().max())
    assert err <= tol, f"max |kernel - reference| = {err:.3g} > {tol:.3g}"


def _kernel_ids(scheme: str, dtype: torch.dtype) -> list[str]:
    return [k.name for k in candidates(scheme, "cpu", dtype)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_matches_dequantized_reference(dtype, group_size):
    w, x = _data(dtype)
    for name in _kernel_ids("int4_weight_only", dtype):
        q = Int4WeightTensor.from_float(w, group_size=group_size, kernel=name)
        kernel = q._kernel()
        ref = F.linear(x.to(kernel.compute_dtype_for(dtype)).float(), q.dequantize(torch.float32))
        _check(F.linear(x, q), ref, _tolerance(kernel, dtype, ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_sqnr_vs_float(dtype, group_size):
    w, x = _data(dtype)
    q = Int4WeightTensor.from_float(w, group_size=group_size)
    assert sqnr(F.linear(x.float(), w.float()), F.linear(x, q)) >= SQNR_FLOOR_DB[f"int4_g{group_size}"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", ["per_row", "per_tensor"])
def test_int8_weight_only_matches_reference_and_float(dtype, granularity):
    w, x = _data(dtype)
    for name in _kernel_ids("int8_weight_only", dtype):
        q = Int8WeightTensor.from_float(w, granularity=granularity, kernel=name)
        kernel = q._kernel()
        ref = F.linear(x.to(kernel.compute_dtype_for(dtype)).float(), q.dequantize(torch.float32))
        y = F.linear(x, q)
        _check(y, ref, _tolerance(kernel, dtype, ref))
        assert sqnr(F.linear(x.float(), w.float()), y) >= SQNR_FLOOR_DB["int8_weight_only"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_granularity", ["per_row", "per_tensor"])
@pytest.mark.parametrize("act_mapping", ["symmetric", "asymmetric"])
def test_int8_dynamic_matches_reference_and_float(dtype, act_granularity, act_mapping):
    w, x = _data(dtype)
    q8, scale, zp = quantize_activation(x, per_token=act_granularity == "per_row",
                                        symmetric=act_mapping == "symmetric",
                                        quant_min=-128, quant_max=127)
    x_dq = (q8.float() - (0 if zp is None else zp)) * scale
    for name in _kernel_ids("int8_dynamic", dtype):
        q = Int8DynamicWeightTensor.from_float(w, act_granularity=act_granularity,
                                               act_mapping=act_mapping, kernel=name)
        ref = F.linear(x_dq, q.dequantize(torch.float32))
        y = F.linear(x, q)
        _check(y, ref, _tolerance(q._kernel(), dtype, ref))
        assert sqnr(F.linear(x.float(), w.float()), y) >= SQNR_FLOOR_DB["int8_dynamic"]


@pytest.mark.parametrize("cls,kwargs", [
    pytest.param(Int4WeightTensor, {"group_size": 32}, id="int4"),
    pytest.param(Int8WeightTensor, {}, id="int8_weight_only"),
], )
def test_fp32_via_bf16_costs_less_than_quantization(cls, kwargs):
    w, x = _data(torch.float32)
    q = cls.from_float(w, **kwargs)
    assert q._kernel().compute_dtype == torch.bfloat16  # the chosen fp32 route
    exact = F.linear(x, q.dequantize(torch.float32))
    assert sqnr(exact, F.linear(x, q)) >= VIA_BF16_FLOOR_DB


def test_dynamic_activation_qparams_are_the_observers_math():
    from observers.qparams import qparams_from_min_max

    x = torch.randn(4, 32)
    _, scale, _ = quantize_activation(x, per_token=True, symmetric=True, quant_min=-128, quant_max=127)
    expected, _ = qparams_from_min_max(x.amin(1), x.amax(1), qscheme=torch.per_channel_symmetric,
                                       dtype=torch.qint8, quant_min=-128, quant_max=127)
    assert torch.equal(scale.flatten(), expected)


def test_int4_values_and_qparams_reproduce_the_weight():
    w = torch.randn(32, 64)
    q = Int4WeightTensor.from_float(w, group_size=32)
    values = q.int_values()
    assert values.dtype == torch.int32 and int(values.min()) >= 0 and int(values.max()) <= 15
    # per group, the reconstruction error is at most half a step (plus the bf16 rounding of scales)
    step = (w.reshape(-1, 32).amax(1) - w.reshape(-1, 32).amin(1).clamp(max=0)) / 15
    err = (q.dequantize() - w).abs().reshape(-1, 32).amax(1)
    assert bool((err <= step * 0.5 * 1.02 + 1e-6).all())


# -- odd shapes ---------------------------------------------------------------------------

def test_int4_in_features_not_multiple_of_group_size_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(48, 16))
    with pytest.raises(QuantizationConfigError, match=r"layer '0'.*in_features=48 is not a multiple of group_size=32"):
        quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert type(model[0].weight) is torch.nn.Parameter  # nothing half-done


@pytest.mark.parametrize("config", [
    pytest.param(Int4WeightOnlyConfig(group_size=32), id="int4"),
    pytest.param(Int8WeightOnlyConfig(), id="int8_weight_only"),
    pytest.param(Int8DynamicActivationInt8WeightConfig(), id="int8_dynamic"),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_out_and_in_features_are_padded(config, dtype):
    """Out features are padded to 16 for int4, in features to 16 for int8 (zeros; results sliced)."""
    in_features = 64 if isinstance(config, Int4WeightOnlyConfig) else 40
    model = torch.nn.Sequential(torch.nn.Linear(in_features, 20)).to(dtype)
    x = torch.randn(2, 3, in_features, dtype=dtype)  # 3-D input, with bias
    ref = model(x).float()
    quantize_(model, config)
    y = model(x)
    assert y.shape == (2, 3, 20) and y.dtype == dtype
    assert sqnr(ref, y) >= 18.0


def test_asymmetric_and_per_tensor_dynamic_config_reaches_the_weight():
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    quantize_(model, Int8DynamicActivationInt8WeightConfig(
        act_mapping_type=MappingType.ASYMMETRIC, granularity=[PerTensor(), PerTensor()], reduce_range=True))
    w = model[0].weight
    assert (w.act_mapping, w.act_granularity, w.granularity, w.act_quant_range) == \
        ("asymmetric", "per_tensor", "per_tensor", (-64, 63))
    assert int(w.int_values().abs().max()) <= 64
