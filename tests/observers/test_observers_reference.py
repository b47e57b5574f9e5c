"""Numerics against torch.ao.quantization.observer (shipped with torch) on the same data.

Every observer/qscheme/dtype combination the reference supports must give
bit-identical min/max statistics and (scale, zero_point), including dtypes.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import observers

ao = pytest.importorskip("torch.ao.quantization.observer")

# torch.ao warns that reduce_range is deprecated; the cases still cover it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")

PT_AFF, PT_SYM = torch.per_tensor_affine, torch.per_tensor_symmetric
PC_AFF, PC_SYM, PC_FLOAT = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)


def _batches(
    seed: int, shape: tuple[int, ...] = (4, 6), positive: bool = False
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(3):
        x = torch.randn(shape, generator=gen) * (1.0 + i) + 0.3 * i
        out.append(x.abs() + 0.1 if positive else x)
    return out


def _run(ours: torch.nn.Module, ref: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    for x in batches:
        assert ours(x) is x
        ref(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_scale, ref_zp = ref.calculate_qparams()
    scale, zp = ours.calculate_qparams()
    torch.testing.assert_close(ours.min_val, ref.min_val, rtol=0, atol=0)
    torch.testing.assert_close(ours.max_val, ref.max_val, rtol=0, atol=0)
    assert scale.dtype == ref_scale.dtype == torch.float32
    assert zp.dtype == ref_zp.dtype
    torch.testing.assert_close(scale, ref_scale, rtol=0, atol=0)
    torch.testing.assert_close(zp, ref_zp, rtol=0, atol=0)
    assert (ours.quant_min, ours.quant_max) == (ref.quant_min, ref.quant_max)


PER_TENSOR_CASES = [
    pytest.param(dict(dtype=torch.quint8, qscheme=PT_AFF), id="quint8-affine"),
    pytest.param(dict(dtype=torch.quint8, qscheme=PT_SYM), id="quint8-symmetric"),
    pytest.param(dict(dtype=torch.qint8, qscheme=PT_AFF), id="qint8-affine"),
    pytest.param(dict(dtype=torch.qint8, qscheme=PT_SYM), id="qint8-symmetric"),
    pytest.param(dict(dtype=torch.uint8, qscheme=PT_AFF), id="uint8-affine"),
    pytest.param(dict(dtype=torch.int8, qscheme=PT_SYM), id="int8-symmetric"),
    pytest.param(dict(dtype=torch.int16, qscheme=PT_SYM), id="int16-symmetric"),
    pytest.param(dict(dtype=torch.int16, qscheme=PT_AFF), id="int16-affine"),
    pytest.param(dict(dtype=torch.qint32, qscheme=PT_SYM), id="qint32-symmetric"),
    pytest.param(dict(dtype=torch.int32, qscheme=PT_SYM), id="int32-symmetric"),
    pytest.param(dict(dtype=torch.uint16, qscheme=PT_SYM), id="uint16-symmetric"),
    pytest.param(
        dict(dtype=torch.quint8, qscheme=PT_AFF, reduce_range=True), id="quint8-affine-reduce"
    ),
    pytest.param(
        dict(dtype=torch.qint8, qscheme=PT_SYM, reduce_range=True), id="qint8-symmetric-reduce"
    ),
    pytest.param(dict(dtype=torch.quint8, quant_min=0, quant_max=127), id="quint8-0to127"),
    pytest.param(
        dict(dtype=torch.int8, qscheme=PT_SYM, quant_min=-8, quant_max=7),
        id="int4-in-int8-symmetric",
    ),
    pytest.param(
        dict(dtype=torch.int8, qscheme=PT_AFF, quant_min=-8, quant_max=7), id="int4-in-int8-affine"
    ),
    pytest.param(
        dict(dtype=torch.qint8, qscheme=PT_SYM, quant_min=-127, quant_max=127, eps=2**-12),
        id="qint8-narrow",
    ),
    pytest.param(
        dict(dtype=torch.uint8, qscheme=PT_SYM, quant_min=0, quant_max=15),
        id="uint4-in-uint8-symmetric",
    ),
    pytest.param(
        dict(dtype=torch.quint8, quant_min=0, quant_max=255, reduce_range=True),
        id="quint8-custom-reduce",
    ),
]


@pytest.mark.parametrize("kwargs", PER_TENSOR_CASES)
@pytest.mark.parametrize("positive", [False, True], ids=["mixed-sign", "positive"])
def test_minmax_matches_torch_ao(kwargs: dict, positive: bool) -> None:
    _run(
        observers.MinMaxObserver(**kwargs),
        ao.MinMaxObserver(**kwargs),
        _batches(0, positive=positive),
    )


@pytest.mark.parametrize("kwargs", PER_TENSOR_CASES)
def test_moving_average_matches_torch_ao(kwargs: dict) -> None:
    kwargs = dict(kwargs, averaging_constant=0.3)
    _run(
        observers.MovingAverageMinMaxObserver(**kwargs),
        ao.MovingAverageMinMaxObserver(**kwargs),
        _batches(1),
    )


PER_CHANNEL_CASES = [
    pytest.param(dict(dtype=torch.quint8, qscheme=PC_AFF), id="quint8-affine"),
    pytest.param(dict(dtype=torch.qint8, qscheme=PC_SYM), id="qint8-symmetric"),
    pytest.param(dict(dtype=torch.quint8, qscheme=PC_SYM), id="quint8-symmetric"),
    pytest.param(dict(dtype=torch.quint8, qscheme=PC_FLOAT), id="quint8-float-qparams"),
    pytest.param(dict(dtype=torch.quint4x2, qscheme=PC_FLOAT), id="quint4x2-float-qparams"),
    pytest.param(
        dict(dtype=torch.int8, qscheme=PC_SYM, quant_min=-8, quant_max=7), id="int4-in-int8"
    ),
    pytest.param(
        dict(dtype=torch.qint8, qscheme=PC_SYM, quant_min=-127, quant_max=127, eps=2**-12),
        id="qint8-narrow",
    ),
    pytest.param(dict(dtype=torch.int32, qscheme=PC_SYM), id="int32-symmetric"),
]


@pytest.mark.parametrize("kwargs", PER_CHANNEL_CASES)
@pytest.mark.parametrize("ch_axis", [0, 1, -1], ids=["axis0", "axis1", "axis-1"])
def test_per_channel_matches_torch_ao(kwargs: dict, ch_axis: int) -> None:
    kwargs = dict(kwargs, ch_axis=ch_axis)
    _run(
        observers.PerChannelMinMaxObserver(**kwargs),
        ao.PerChannelMinMaxObserver(**kwargs),
        _batches(2, shape=(3, 4, 5)),
    )


@pytest.mark.parametrize("kwargs", PER_CHANNEL_CASES)
def test_moving_average_per_channel_matches_torch_ao(kwargs: dict) -> None:
    kwargs = dict(kwargs, ch_axis=1, averaging_constant=0.25)
    _run(
        observers.MovingAveragePerChannelMinMaxObserver(**kwargs),
        ao.MovingAveragePerChannelMinMaxObserver(**kwargs),
        _batches(3, shape=(3, 4, 5)),
    )


HISTOGRAM_CASES = [
    pytest.param(dict(), id="quint8-affine"),
    pytest.param(dict(dtype=torch.qint8, qscheme=PT_SYM), id="qint8-symmetric"),
    pytest.param(dict(quant_min=0, quant_max=127), id="quint8-0to127"),
    pytest.param(
        dict(bins=256, dtype=torch.int8, quant_min=-128, quant_max=127), id="int8-256bins"
    ),
]


@pytest.mark.parametrize("kwargs", HISTOGRAM_CASES)
def test_histogram_matches_torch_ao(kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(512, generator=gen) * s + o for s, o in ((1, 0), (3, 1), (0.5, -2))]
    ours, ref = observers.HistogramObserver(**kwargs), ao.HistogramObserver(**kwargs)
    _run(ours, ref, batches)
    torch.testing.assert_close(ours.histogram, ref.histogram, rtol=0, atol=0)


def test_fixed_qparams_matches_torch_ao() -> None:
    ours = observers.FixedQParamsObserver(scale=2.0 / 256, zero_point=128)
    ref = ao.FixedQParamsObserver(scale=2.0 / 256, zero_point=128)
    for a, b in zip(ours.calculate_qparams(), ref.calculate_qparams()):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name",
    [
        "default_observer",
        "default_weight_observer",
        "default_per_channel_weight_observer",
        "default_histogram_observer",
        "weight_observer_range_neg_127_to_127",
        "per_channel_weight_observer_range_neg_127_to_127",
        "default_float_qparams_observer",
    ],
)
def test_default_constructors_match_torch_ao(name: str) -> None:
    ours, ref = getattr(observers, name)(), getattr(ao, name)()
    for attr in ("dtype", "qscheme", "quant_min", "quant_max", "reduce_range", "is_dynamic"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert torch.equal(ours.eps, ref.eps)
    x = _batches(5, shape=(4, 6))[0]
    _run(ours, ref, [x])
