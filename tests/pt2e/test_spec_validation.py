"""Specs validate against the same facts and checks as the observers built from them."""

from __future__ import annotations

import itertools

import pytest
import torch

from observers import (
    FixedQParamsObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from observers.facts import INT_RANGES, PER_CHANNEL_QSCHEMES, PER_TENSOR_QSCHEMES, SPEC_DTYPES
from pt2e.errors import QuantizationConfigError
from pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationConfig,
    QuantizationSpec,
    get_bias_qspec,
    get_input_act_qspec,
    get_weight_qspec,
)

INT_DTYPES = [d for d in SPEC_DTYPES if d in INT_RANGES]
RANGES = [
    (None, None), (0, 255), (-128, 127), (-127, 127), (-8, 7), (0, 15), (0, 2**16 - 1),
    (-(2**15), 2**15 - 1), (-(2**31), 2**31 - 1),
    (10, 20), (-20, -10), (5, 5), (0, 0), (3, 1), (None, 7), (0, None), (0, 300), (-300, 0),
]
QSCHEMES = PER_TENSOR_QSCHEMES + PER_CHANNEL_QSCHEMES


def _message(ctor, owner):
    """``None`` if ``ctor()`` succeeds, else its error message without the ``owner: `` prefix."""
    try:
        ctor()
    except QuantizationConfigError as e:
        text = str(e)
        assert text.startswith(f"{owner}: "), text
        return text[len(owner) + 2:]
    return None


def _id(case):
    dtype, (lo, hi), qscheme = case
    return f"{str(dtype).removeprefix('torch.')}-{lo}..{hi}-{str(qscheme).removeprefix('torch.')}"


GRID = list(itertools.product(INT_DTYPES, RANGES, QSCHEMES))


@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_spec_accepts_exactly_what_its_observer_accepts(case):
    dtype, (lo, hi), qscheme = case
    per_channel = qscheme in PER_CHANNEL_QSCHEMES
    observer = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    ch_axis = 0 if per_channel else None

    def spec():
        return QuantizationSpec(dtype=dtype, quant_min=lo, quant_max=hi, qscheme=qscheme,
                                ch_axis=ch_axis, observer_or_fake_quant_ctr=observer)

    def obs():
        return observer(dtype=dtype, quant_min=lo, quant_max=hi, qscheme=qscheme)

    assert _message(spec, "QuantizationSpec") == _message(obs, observer.__name__)


FIXED = [
    (torch.uint8, 1 / 256, 0, 0, 255), (torch.int8, 1 / 128, 0, -128, 127),
    (torch.uint8, 0.5, 128, None, None), (torch.uint8, 0.5, 300, 0, 255),
    (torch.int8, 0.5, -129, None, None), (torch.uint8, 0.0, 0, 0, 255),
    (torch.uint8, -1.0, 0, 0, 255), (torch.uint8, 0.5, 0, 10, 20), (torch.uint8, 0.5, 0, 0, 300),
]


@pytest.mark.parametrize(("dtype", "scale", "zero_point", "lo", "hi"), FIXED,
                         ids=[f"{d}-s{s}-zp{z}-{lo}..{hi}" for d, s, z, lo, hi in FIXED])
def test_fixed_spec_accepts_exactly_what_fixed_qparams_observer_accepts(
        dtype, scale, zero_point, lo, hi):
    def spec():
        return FixedQParamsQuantizationSpec(dtype=dtype, scale=scale, zero_point=zero_point,
                                            quant_min=lo, quant_max=hi)

    full = INT_RANGES[dtype]

    def obs():  # what prepare builds from the spec: no range means the dtype's
        return FixedQParamsObserver(scale=scale, zero_point=zero_point, dtype=dtype,
                                    quant_min=full[0] if lo is None else lo,
                                    quant_max=full[1] if hi is None else hi)

    assert _message(spec, "FixedQParamsQuantizationSpec") == _message(obs, "FixedQParamsObserver")


@pytest.mark.parametrize(("lo", "hi", "match"), [
    (10, 20, "must include 0"),
    (0, 0, "strictly less than"),
    (0, None, "give both or neither"),
], ids=["no_zero", "empty", "half_given"])
def test_impossible_range_fails_when_the_spec_is_built(lo, hi, match):
    with pytest.raises(QuantizationConfigError, match=f"^QuantizationSpec: .*{match}"):
        QuantizationSpec(dtype=torch.uint8, quant_min=lo, quant_max=hi,
                         qscheme=torch.per_tensor_affine,
                         observer_or_fake_quant_ctr=MinMaxObserver)


def test_float_and_default_specs_still_build():
    QuantizationSpec(dtype=torch.float16, observer_or_fake_quant_ctr=PlaceholderObserver)
    QuantizationSpec(dtype=torch.int8, observer_or_fake_quant_ctr=MinMaxObserver)


def test_per_channel_spec_may_leave_the_axis_to_its_observer():
    # torchao accepts it; the observer's default axis applies (see test_torchao_parity)
    spec = QuantizationSpec(dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                            observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    assert spec.ch_axis is None


def test_derived_per_channel_spec_needs_a_channel_axis():
    # a derived observer has no default axis to fall back on
    with pytest.raises(QuantizationConfigError, match="so ch_axis must be given"):
        DerivedQuantizationSpec(derived_from=[torch.fx.Graph().placeholder("x")],
                                derive_qparams_fn=lambda obs: obs, dtype=torch.int32,
                                qscheme=torch.per_channel_symmetric)


def test_derived_spec_uses_the_same_range_check():
    with pytest.raises(QuantizationConfigError, match="^DerivedQuantizationSpec: quant_max=2147483648"):
        DerivedQuantizationSpec(derived_from=[torch.fx.Graph().placeholder("x")],
                                derive_qparams_fn=lambda obs: obs, dtype=torch.int32,
                                quant_min=0, quant_max=2**31)


def _spec(dtype=torch.int8, qscheme=torch.per_tensor_symmetric):
    return QuantizationSpec(dtype=dtype, qscheme=qscheme, ch_axis=0,
                            observer_or_fake_quant_ctr=MinMaxObserver)


@pytest.mark.parametrize(("accessor", "config", "match"), [
    (get_input_act_qspec, QuantizationConfig(_spec(qscheme=torch.per_channel_symmetric), None,
                                             None, None),
     r"QuantizationConfig.input_activation: qscheme=torch.per_channel_symmetric is not supported"),
    (get_weight_qspec, QuantizationConfig(None, None, _spec(qscheme=torch.per_tensor_affine), None),
     r"QuantizationConfig.weight: qscheme=torch.per_tensor_affine is not supported"),
    (get_bias_qspec, QuantizationConfig(None, None, None, _spec(dtype=torch.int32)),
     r"QuantizationConfig.bias: dtype=torch.int32 is not supported; allowed: torch.float32"),
], ids=["activation", "weight", "bias"])
def test_config_accessors_reject_per_role(accessor, config, match):
    with pytest.raises(QuantizationConfigError, match=match):
        accessor(config)
