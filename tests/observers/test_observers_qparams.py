"""Closed-form expectations for the qparams math, and the configuration errors."""

from __future__ import annotations

import pytest
import torch

import observers
from observers import QuantizationConfigError, qparams_from_min_max, resolve_quant_range


def _qparams(lo: float, hi: float, **kwargs):
    return qparams_from_min_max(torch.tensor(lo), torch.tensor(hi), **kwargs)


@pytest.mark.parametrize(
    ("lo", "hi", "quant_min", "quant_max", "scale", "zero_point"),
    [
        pytest.param(-1.0, 3.0, 0, 255, 4 / 255, 64, id="uint8-straddle"),
        pytest.param(0.5, 2.0, 0, 255, 2 / 255, 0, id="uint8-positive-range-includes-0"),
        pytest.param(-2.0, -0.5, 0, 255, 2 / 255, 255, id="uint8-negative-range-includes-0"),
        pytest.param(-1.0, 3.0, -128, 127, 4 / 255, -64, id="int8-straddle"),
        pytest.param(-1.0, 2.0, -8, 7, 3 / 15, -3, id="int4-in-int8"),
    ],
)
def test_affine_closed_form(lo, hi, quant_min, quant_max, scale, zero_point) -> None:
    s, z = _qparams(
        lo,
        hi,
        qscheme=torch.per_tensor_affine,
        dtype=torch.int8 if quant_min < 0 else torch.uint8,
        quant_min=quant_min,
        quant_max=quant_max,
    )
    assert s.shape == z.shape == (1,)
    assert s.item() == pytest.approx(scale, rel=1e-6)
    assert z.item() == zero_point
    assert z.dtype == torch.int32


@pytest.mark.parametrize(
    ("dtype", "quant_min", "quant_max", "customized", "scale", "zero_point"),
    [
        pytest.param(torch.qint8, -128, 127, False, 3 / 127.5, 0, id="qint8"),
        pytest.param(torch.quint8, 0, 255, False, 3 / 127.5, 128, id="quint8-default-range"),
        pytest.param(torch.quint8, 0, 255, True, 3 / 127.5, 127, id="quint8-custom-range"),
        pytest.param(torch.int8, -8, 7, True, 3 / 7.5, 0, id="int4-in-int8"),
        pytest.param(torch.int16, -(2**15), 2**15 - 1, False, 3 / 32767.5, 0, id="int16"),
        pytest.param(torch.uint16, 0, 2**16 - 1, False, 3 / 32767.5, 2**15, id="uint16"),
    ],
)
def test_symmetric_closed_form(dtype, quant_min, quant_max, customized, scale, zero_point) -> None:
    s, z = _qparams(
        -3.0,
        1.0,
        qscheme=torch.per_tensor_symmetric,
        dtype=dtype,
        quant_min=quant_min,
        quant_max=quant_max,
        customized_range=customized,
    )
    assert s.item() == pytest.approx(scale, rel=1e-6)
    assert z.item() == zero_point
    assert z.dtype == torch.int64


def test_int32_affine_range_does_not_overflow() -> None:
    s, z = _qparams(
        -1.0,
        0.0,
        qscheme=torch.per_tensor_affine,
        dtype=torch.int32,
        quant_min=-(2**31),
        quant_max=2**31 - 1,
        eps=1e-12,
    )
    assert z.item() == 2**31 - 1  # min maps to quant_min, 0 to the top of the range
    assert s.item() == pytest.approx(1 / (2**32 - 1), rel=1e-6)


def test_eps_floors_the_scale() -> None:
    s, z = _qparams(
        0.0,
        0.0,
        qscheme=torch.per_tensor_affine,
        dtype=torch.quint8,
        quant_min=0,
        quant_max=255,
        eps=1e-3,
    )
    assert s.item() == pytest.approx(1e-3)
    assert z.item() == 0


def test_float_qparams_closed_form() -> None:
    s, z = qparams_from_min_max(
        torch.tensor([1.0, -2.0, 3.0]),
        torch.tensor([2.0, 2.0, 3.0]),
        qscheme=torch.per_channel_affine_float_qparams,
        dtype=torch.quint8,
        quant_min=0,
        quant_max=255,
    )
    torch.testing.assert_close(
        s, torch.tensor([1 / 255, 4 / 255, 1.0])
    )  # constant channel: scale 1
    torch.testing.assert_close(z, torch.tensor([-255.0, 127.5, -3.0]))
    assert z.dtype == torch.float32


def test_per_channel_shapes() -> None:
    s, z = qparams_from_min_max(
        -torch.arange(1.0, 5.0),
        torch.arange(1.0, 5.0),
        qscheme=torch.per_channel_symmetric,
        dtype=torch.qint8,
        quant_min=-128,
        quant_max=127,
    )
    assert s.shape == z.shape == (4,)
    torch.testing.assert_close(s, torch.arange(1.0, 5.0) / 127.5)


@pytest.mark.parametrize(
    ("dtype", "reduce_range", "expected"),
    [
        pytest.param(torch.qint8, False, (-128, 127), id="qint8"),
        pytest.param(torch.qint8, True, (-64, 63), id="qint8-reduce"),
        pytest.param(torch.quint8, True, (0, 127), id="quint8-reduce"),
        pytest.param(torch.uint8, False, (0, 255), id="uint8"),
        pytest.param(torch.int16, False, (-(2**15), 2**15 - 1), id="int16"),
        pytest.param(torch.qint32, True, (-(2**31), 2**31 - 1), id="qint32-reduce-ignored"),
        pytest.param(torch.quint4x2, False, (0, 15), id="quint4x2"),
    ],
)
def test_default_quant_range(dtype, reduce_range, expected) -> None:
    assert observers.default_quant_range(dtype, reduce_range) == expected


def test_custom_range_with_reduce_range_halves_both_ends() -> None:
    assert resolve_quant_range(torch.qint8, -128, 127, reduce_range=True) == (-64, 63)


# -- configuration errors: the message names the argument, the value and the allowed set ---


@pytest.mark.parametrize(
    ("factory", "fragments"),
    [
        pytest.param(
            lambda: observers.MinMaxObserver(qscheme=torch.per_channel_affine),
            [
                "MinMaxObserver",
                "qscheme=torch.per_channel_affine",
                "torch.per_tensor_affine",
                "torch.per_tensor_symmetric",
                "PerChannelMinMaxObserver",
            ],
            id="minmax-per-channel-qscheme",
        ),
        pytest.param(
            lambda: observers.PerChannelMinMaxObserver(qscheme=torch.per_tensor_affine),
            [
                "PerChannelMinMaxObserver",
                "qscheme=torch.per_tensor_affine",
                "torch.per_channel_symmetric",
            ],
            id="per-channel-per-tensor-qscheme",
        ),
        pytest.param(
            lambda: observers.HistogramObserver(qscheme="affine"),
            ["HistogramObserver", "qscheme=affine", "allowed"],
            id="histogram-string-qscheme",
        ),
        pytest.param(
            lambda: observers.MinMaxObserver(dtype=torch.float64),
            ["dtype=torch.float64", "torch.qint8", "torch.quint8"],
            id="bad-dtype",
        ),
        pytest.param(
            lambda: observers.MinMaxObserver(dtype=torch.uint8, quant_min=0, quant_max=300),
            ["quant_max=300", "dtype=torch.uint8", "255"],
            id="range-exceeds-dtype",
        ),
        pytest.param(
            lambda: observers.MinMaxObserver(dtype=torch.int8, quant_min=1, quant_max=7),
            ["quant_min=1", "include 0"],
            id="range-excludes-zero",
        ),
        pytest.param(
            lambda: observers.MinMaxObserver(quant_min=0),
            ["quant_min=0", "quant_max=None", "both or neither"],
            id="half-range",
        ),
        pytest.param(
            lambda: observers.MinMaxObserver(
                dtype=torch.quint8, qscheme=torch.per_tensor_symmetric, reduce_range=True
            ),
            ["reduce_range=True", "quant_min/quant_max"],
            id="symmetric-quint8-reduce",
        ),
        pytest.param(
            lambda: observers.MovingAverageMinMaxObserver(is_dynamic=True),
            ["is_dynamic=True", "averaging_constant=0.01"],
            id="dynamic-moving-average",
        ),
        pytest.param(
            lambda: observers.PerChannelMinMaxObserver(is_dynamic=True),
            ["is_dynamic=True"],
            id="dynamic-per-channel",
        ),
        pytest.param(
            lambda: observers.HistogramObserver(dtype=torch.float8_e4m3fn),
            ["dtype=torch.float8_e4m3fn", "integer"],
            id="histogram-float8",
        ),
        pytest.param(
            lambda: observers.FixedQParamsObserver(scale=0.1, zero_point=300),
            ["zero_point=300", "[0, 255]"],
            id="fixed-zero-point-out-of-range",
        ),
        pytest.param(
            lambda: observers.DerivedObserverOrFakeQuantize(
                torch.int32,
                [],
                lambda obs: (torch.ones(1), torch.zeros(1)),
                qscheme=torch.per_channel_symmetric,
            ),
            ["ch_axis"],
            id="derived-per-channel-without-axis",
        ),
        pytest.param(
            lambda: observers.FusedMovingAvgObsFakeQuantize(observer=observers.MinMaxObserver),
            ["observer=MinMaxObserver", "MovingAverageMinMaxObserver"],
            id="fused-wrong-observer",
        ),
    ],
)
def test_config_errors_are_clear(factory, fragments) -> None:
    with pytest.raises(QuantizationConfigError) as info:
        factory()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, observers.Pt2eError)
