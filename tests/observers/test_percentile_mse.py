"""PercentileObserver and MSEObserver: ranges against numpy, MSE quality, and the PT2E flow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from observers import (
    MinMaxObserver,
    MSEObserver,
    ObserverStateError,
    PercentileObserver,
    QuantizationConfigError,
)
from tests.support.models import MLP
from tests.support.numerics import sqnr

# A percentile read off the histogram is exact to this many bins of the final range
# (one for the in-bin interpolation, one for re-binning as the range grew).
PERCENTILE_TOLERANCE_BINS = 2
# MSEObserver's MSE may exceed the best of numpy's exhaustive grid by this factor
# (its error estimate uses the histogram, not the raw values).
MSE_GRID_SLACK = 1.02
# An MLP quantized with either observer, X86 or XNNPACK config, against float (dB).
FLOW_SQNR_DB = 20.0


def _batches(seed: int) -> list[torch.Tensor]:
    """Three batches with outliers whose range grows (so the histogram re-bins)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(20_000, generator=g),
        torch.randn(20_000, generator=g) * 1.5 + 0.5,
        torch.cat([torch.randn(20_000, generator=g), torch.tensor([9.0, -7.0, 12.0])]),
    ]


def _observe(observer, batches):
    for x in batches:
        observer(x)
    return observer


def _numpy_affine_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(np.clip(qmin - np.round(lo / scale), qmin, qmax))


def _raw_mse(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> float:
    y = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return float((y - x).double().pow(2).mean())


# ---- PercentileObserver -----------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
@pytest.mark.parametrize("seed", [0, 1])
def test_percentile_range_matches_numpy(percentile: float, seed: int) -> None:
    batches = _batches(seed)
    obs = _observe(PercentileObserver(percentile=percentile), batches)
    data = torch.cat(batches).numpy().astype(np.float64)
    low, high = obs.clipping_range()
    bin_width = (data.max() - data.min()) / obs.bins
    tolerance = PERCENTILE_TOLERANCE_BINS * bin_width
    assert low.item() == pytest.approx(np.percentile(data, 100 - percentile), abs=tolerance)
    assert high.item() == pytest.approx(np.percentile(data, percentile), abs=tolerance)


@pytest.mark.parametrize(
    "kwargs, qmin, qmax",
    [
        pytest.param({}, 0, 255, id="quint8-affine"),
        pytest.param(dict(dtype=torch.int8, quant_min=-128, quant_max=127), -128, 127,
                     id="int8-affine"),
    ],
)
def test_percentile_qparams_match_closed_form(kwargs, qmin: int, qmax: int) -> None:
    batches = _batches(2)
    obs = _observe(PercentileObserver(percentile=99.9, **kwargs), batches)
    data = torch.cat(batches).numpy().astype(np.float64)
    scale, zero_point = _numpy_affine_qparams(
        np.percentile(data, 0.1), np.percentile(data, 99.9), qmin, qmax
    )
    bin_width = (data.max() - data.min()) / obs.bins
    got_scale, got_zero_point = obs.calculate_qparams()
    # each end moves by at most the tolerance, so the scale by twice that over the levels
    assert got_scale.item() == pytest.approx(
        scale, abs=2 * PERCENTILE_TOLERANCE_BINS * bin_width / (qmax - qmin))
    assert abs(got_zero_point.item() - zero_point) <= 1


def test_percentile_symmetric_uses_the_larger_end() -> None:
    batches = _batches(3)
    obs = _observe(PercentileObserver(percentile=99.0, dtype=torch.qint8,
                                      qscheme=torch.per_tensor_symmetric), batches)
    data = torch.cat(batches).numpy().astype(np.float64)
    bound = max(-np.percentile(data, 1.0), np.percentile(data, 99.0))
    bin_width = (data.max() - data.min()) / obs.bins
    scale, zero_point = obs.calculate_qparams()
    assert zero_point.item() == 0
    assert scale.item() == pytest.approx(bound / 127.5, abs=PERCENTILE_TOLERANCE_BINS * bin_width / 127.5)


def test_percentile_100_is_the_min_max_range() -> None:
    batches = _batches(4)
    obs = _observe(PercentileObserver(percentile=100), batches)
    minmax = _observe(MinMaxObserver(), batches)
    torch.testing.assert_close(obs.calculate_qparams()[0], minmax.calculate_qparams()[0])
    assert obs.calculate_qparams()[1].item() == minmax.calculate_qparams()[1].item()


def test_percentile_clips_outliers_that_min_max_keeps() -> None:
    batches = _batches(5)
    assert (_observe(PercentileObserver(percentile=99.9), batches).calculate_qparams()[0]
            < _observe(MinMaxObserver(), batches).calculate_qparams()[0] / 2)


# ---- MSEObserver ------------------------------------------------------------------------------


def _numpy_best_grid_mse(data: np.ndarray, num_candidates: int, qmin: int, qmax: int) -> float:
    """Exhaustive search over every (a, b) of the grid, on the raw values, in numpy."""
    lo, hi = data.min(), data.max()
    shrink = np.arange(num_candidates, 0, -1) / num_candidates
    best = np.inf
    for a in shrink:
        for b in shrink:
            scale, zero_point = _numpy_affine_qparams(a * lo, b * hi, qmin, qmax)
            q = np.clip(np.round(data / scale) + zero_point, qmin, qmax)
            best = min(best, float(np.mean(((q - zero_point) * scale - data) ** 2)))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_mse_range_is_the_best_of_the_grid(seed: int) -> None:
    batches = _batches(seed)
    data = torch.cat(batches)
    obs = _observe(MSEObserver(num_candidates=20), batches)
    scale, zero_point = obs.calculate_qparams()
    ours = _raw_mse(data, scale.item(), int(zero_point), 0, 255)
    best = _numpy_best_grid_mse(data.numpy().astype(np.float64), 20, 0, 255)
    assert ours <= best * MSE_GRID_SLACK


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("laplace", id="laplace"),
        pytest.param("normal-with-outliers", id="normal-with-outliers"),
    ],
)
def test_mse_beats_min_max_on_data_with_outliers(kind: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    if kind == "laplace":
        u = torch.rand(100_000, generator=g, dtype=torch.float64) - 0.5
        x = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()
    else:
        x = torch.cat([torch.randn(100_000, generator=g), 10 * torch.rand(10, generator=g) + 5])
    results = {}
    for name, obs in (("mse", MSEObserver()), ("minmax", MinMaxObserver())):
        obs(x)
        scale, zero_point = obs.calculate_qparams()
        results[name] = _raw_mse(x, scale.item(), int(zero_point), 0, 255)
    assert results["mse"] < 0.95 * results["minmax"]


def test_mse_keeps_the_full_range_on_uniform_data() -> None:
    # [0, 3]: the zero point is exact, so any clipping only adds error. (On [-1, 3] a
    # slightly narrower range wins, because it rounds the zero point the better way.)
    obs = MSEObserver(bins=256)
    obs(torch.linspace(0.0, 3.0, 10_001))
    low, high = obs.clipping_range()
    assert (low.item(), high.item()) == (0.0, 3.0)


def test_mse_candidate_errors_match_a_direct_computation() -> None:
    """The histogram error estimate tracks the raw-data error of the same candidate ranges."""
    x = _batches(6)[0]
    obs = MSEObserver(bins=2048)
    obs(x)
    lows = torch.tensor([-4.0, -2.0, -1.0])
    highs = torch.tensor([4.0, 2.0, 1.0])
    estimated = obs.candidate_errors(lows, highs) / x.numel()
    direct = []
    for lo, hi in zip(lows.tolist(), highs.tolist()):
        scale, zero_point = _numpy_affine_qparams(lo, hi, 0, 255)
        direct.append(_raw_mse(x, scale, zero_point, 0, 255))
    torch.testing.assert_close(estimated.double(), torch.tensor(direct, dtype=torch.float64),
                               rtol=0.05, atol=0.0)


# ---- shared behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [PercentileObserver, MSEObserver], ids=["percentile", "mse"])
def test_unobserved_raises(make) -> None:
    with pytest.raises(ObserverStateError, match="has not observed"):
        make().calculate_qparams()


@pytest.mark.parametrize("make", [PercentileObserver, MSEObserver], ids=["percentile", "mse"])
def test_state_dict_round_trip(make) -> None:
    obs = _observe(make(bins=256), _batches(7))
    fresh = make(bins=256)
    fresh.load_state_dict(obs.state_dict())
    assert [t.tolist() for t in fresh.calculate_qparams()] == \
        [t.tolist() for t in obs.calculate_qparams()]


@pytest.mark.parametrize("make", [PercentileObserver, MSEObserver], ids=["percentile", "mse"])
def test_constant_input_gives_the_min_max_qparams(make) -> None:
    obs, minmax = make(), MinMaxObserver()
    obs(torch.full((10,), 0.5))
    minmax(torch.full((10,), 0.5))
    assert [t.tolist() for t in obs.calculate_qparams()] == \
        [t.tolist() for t in minmax.calculate_qparams()]


@pytest.mark.parametrize(
    "make, match",
    [
        pytest.param(lambda: PercentileObserver(percentile=50), "percentile=50", id="p50"),
        pytest.param(lambda: PercentileObserver(percentile=100.5), "percentile=100.5", id="p>100"),
        pytest.param(lambda: PercentileObserver(percentile=True), "percentile=True", id="p-bool"),
        pytest.param(lambda: MSEObserver(num_candidates=0), "num_candidates=0", id="mse-0"),
        pytest.param(lambda: MSEObserver(upsample=2.5), "upsample=2.5", id="mse-upsample"),
        pytest.param(lambda: MSEObserver(qscheme=torch.per_channel_affine), "per_channel_affine",
                     id="mse-per-channel"),
    ],
)
def test_bad_arguments_raise_config_errors(make, match: str) -> None:
    with pytest.raises(QuantizationConfigError, match=match):
        make()


# ---- through prepare/convert ------------------------------------------------------------------


def _x86_config():
    from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    return X86InductorQuantizer, get_default_x86_inductor_quantization_config()


def _xnnpack_config():
    from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

    return XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)


OBSERVERS = [
    pytest.param(PercentileObserver.with_args(percentile=99.9), id="percentile"),
    pytest.param(MSEObserver.with_args(num_candidates=50), id="mse"),
]


@pytest.mark.parametrize("backend", [_x86_config, _xnnpack_config], ids=["x86", "xnnpack"])
@pytest.mark.parametrize("observer", OBSERVERS)
def test_observer_in_a_quantization_spec_through_prepare_convert(backend, observer) -> None:
    from pt2e import convert_pt2e, prepare_pt2e

    quantizer_cls, config = backend()
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer)
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(64, 16)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(),
                            quantizer_cls().set_global(config))
    chosen = [m for m in prepared.modules() if isinstance(m, type(observer()))]
    assert chosen, "the spec's observer was not inserted"
    for _ in range(4):
        prepared(torch.randn(64, 16))
    expected = {round(float(m.calculate_qparams()[0]), 9) for m in chosen}
    converted = convert_pt2e(prepared)
    scales = {
        round(float(n.args[1]), 9) for n in converted.graph.nodes
        if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
    }
    assert expected <= scales
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) > FLOW_SQNR_DB
