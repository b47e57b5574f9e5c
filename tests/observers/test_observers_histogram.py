"""HistogramObserver: range search quality and agreement with torchao's implementation."""

from __future__ import annotations

import warnings

import pytest
import torch

from observers import HistogramObserver, MinMaxObserver, ObserverStateError

# Quantization SQNR must not drop below MinMaxObserver's by more than this (dB).
SQNR_TOLERANCE_DB = 0.01


def _sqnr_db(x: torch.Tensor, observer: torch.nn.Module) -> float:
    scale, zero_point = observer.calculate_qparams()
    y = torch.fake_quantize_per_tensor_affine(
        x, scale, zero_point.int(), observer.quant_min, observer.quant_max
    )
    return float(10 * torch.log10(x.pow(2).mean() / (x - y).pow(2).mean()))


HEAVY_TAILED = [
    pytest.param(torch.distributions.StudentT(2.0), id="student-t-df2"),
    pytest.param(torch.distributions.StudentT(3.0), id="student-t-df3"),
    pytest.param(torch.distributions.Laplace(0.0, 1.0), id="laplace"),
]


@pytest.mark.parametrize("dist", HEAVY_TAILED)
@pytest.mark.parametrize("seed", [0, 1])
def test_sqnr_at_least_minmax_on_heavy_tails(dist, seed: int) -> None:
    torch.manual_seed(seed)
    x = dist.sample((4096,))
    hist, minmax = HistogramObserver(), MinMaxObserver()
    hist(x)
    minmax(x)
    assert _sqnr_db(x, hist) >= _sqnr_db(x, minmax) - SQNR_TOLERANCE_DB


def test_search_clips_a_heavy_tail() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(4000), torch.randn(400) * 20])  # 10% wide component
    hist, minmax = HistogramObserver(), MinMaxObserver()
    hist(x)
    minmax(x)
    assert hist.calculate_qparams()[0] < minmax.calculate_qparams()[0]
    assert _sqnr_db(x, hist) > _sqnr_db(x, minmax)


CASES = [
    pytest.param(dict(), id="quint8-affine"),
    pytest.param(
        dict(bins=128, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric), id="qint8-symmetric"
    ),
    pytest.param(dict(quant_min=0, quant_max=127), id="quint8-0to127"),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_matches_torchao_over_growing_ranges(kwargs: dict) -> None:
    ref_module = pytest.importorskip("torchao.quantization.pt2e")
    torch.manual_seed(7)
    batches = [torch.full((4,), 0.5)]  # a single value first: the degenerate re-binning path
    batches += [torch.distributions.StudentT(3.0).sample((500,)) * s for s in (0.5, 1.0, 4.0, 2.0)]
    ours, ref = HistogramObserver(**kwargs), ref_module.HistogramObserver(**kwargs)
    for x in batches:
        ours(x)
        ref(x)
    torch.testing.assert_close(ours.histogram, ref.histogram)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.calculate_qparams()
    for got, want in zip(ours.calculate_qparams(), expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_constant_input() -> None:
    obs = HistogramObserver(bins=32)
    obs(torch.full((10,), 2.0))
    scale, zero_point = obs.calculate_qparams()
    assert scale.item() == pytest.approx(2.0 / 255)
    assert zero_point.item() == 0


def test_bins_mismatch_after_bad_state_load() -> None:
    obs = HistogramObserver(bins=16)
    obs(torch.randn(10))
    obs.bins = 8
    with pytest.raises(ObserverStateError, match="bins"):
        obs.calculate_qparams()
