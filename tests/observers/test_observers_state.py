"""Observer state: state_dict round trips, deepcopy, no-data and NaN/Inf handling."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import observers
from observers import ObserverStateError

CALIBRATED_OBSERVERS = [
    pytest.param(lambda: observers.MinMaxObserver(), id="MinMaxObserver"),
    pytest.param(
        lambda: observers.MovingAverageMinMaxObserver(averaging_constant=0.5),
        id="MovingAverageMinMaxObserver",
    ),
    pytest.param(
        lambda: observers.PerChannelMinMaxObserver(ch_axis=1), id="PerChannelMinMaxObserver"
    ),
    pytest.param(
        lambda: observers.MovingAveragePerChannelMinMaxObserver(ch_axis=0),
        id="MovingAveragePerChannelMinMaxObserver",
    ),
    pytest.param(lambda: observers.HistogramObserver(bins=64), id="HistogramObserver"),
]


def _calibrate(obs: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        obs(torch.randn(3, 5, generator=gen))
    return obs


def _assert_same_qparams(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for x, y in zip(a.calculate_qparams(), b.calculate_qparams()):
        assert x.dtype == y.dtype
        assert torch.equal(x, y)


@pytest.mark.parametrize("make", CALIBRATED_OBSERVERS)
def test_state_dict_loads_into_fresh_observer(make) -> None:
    trained = _calibrate(make())
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()  # per-channel buffers are still empty-shaped here
    fresh.load_state_dict(torch.load(buffer))
    _assert_same_qparams(trained, fresh)
    # Observation continues from the loaded state.
    x = torch.full((3, 5), 10.0)
    trained(x)
    fresh(x)
    _assert_same_qparams(trained, fresh)


@pytest.mark.parametrize("make", CALIBRATED_OBSERVERS)
def test_deepcopy_is_independent(make) -> None:
    original = _calibrate(make())
    clone = copy.deepcopy(original)
    _assert_same_qparams(original, clone)
    clone(torch.full((3, 5), 100.0))
    assert not torch.equal(original.max_val, clone.max_val)


def test_state_dict_round_trip_through_model_with_fake_quant() -> None:
    model = torch.nn.Sequential(observers.default_per_channel_weight_fake_quant())
    model(torch.randn(4, 3))
    fresh = torch.nn.Sequential(observers.default_per_channel_weight_fake_quant())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh[0].scale, model[0].scale)
    _assert_same_qparams(model[0], fresh[0])


@pytest.mark.parametrize("make", CALIBRATED_OBSERVERS)
def test_no_data_raises_clear_error(make) -> None:
    obs = make()
    with pytest.raises(ObserverStateError) as info:
        obs.calculate_qparams()
    message = str(info.value)
    assert type(obs).__name__ in message
    assert "calibration data" in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("make", CALIBRATED_OBSERVERS)
def test_only_nan_and_inf_raises_clear_error(make) -> None:
    obs = make()
    obs(torch.tensor([[float("nan"), float("inf"), -float("inf"), float("nan"), float("nan")]] * 3))
    with pytest.raises(ObserverStateError, match="finite"):
        obs.calculate_qparams()


@pytest.mark.parametrize("make", CALIBRATED_OBSERVERS)
def test_nan_and_inf_are_ignored(make) -> None:
    # Every row and every column keeps at least one copy of each of its finite values.
    clean = torch.tensor([[-1.0, 0.5, 2.0, -1.0, 0.5]] * 3)
    dirty = clean.clone()
    dirty[0, 3], dirty[1, 4], dirty[2, 3] = float("nan"), float("inf"), -float("inf")
    ref, obs = make(), make()
    ref(clean)
    obs(dirty)
    _assert_same_qparams(ref, obs)


def test_per_channel_with_unobserved_channel_names_it() -> None:
    obs = observers.PerChannelMinMaxObserver(ch_axis=0)
    obs(torch.tensor([[1.0, 2.0], [float("nan"), float("nan")]]))
    with pytest.raises(ObserverStateError, match=r"channels \[1\]"):
        obs.calculate_qparams()


def test_moving_average_skips_batches_without_finite_values() -> None:
    obs = observers.MovingAverageMinMaxObserver(averaging_constant=0.5)
    obs(torch.tensor([0.0, 2.0]))
    obs(torch.tensor([float("nan")]))
    obs(torch.tensor([0.0, 4.0]))
    assert obs.max_val.item() == 3.0


def test_channel_count_change_is_reported() -> None:
    obs = observers.PerChannelMinMaxObserver(ch_axis=0)
    obs(torch.randn(3, 2))
    with pytest.raises(ObserverStateError, match="got 4 channels"):
        obs(torch.randn(4, 2))


def test_reset_min_max_vals() -> None:
    obs = _calibrate(observers.PerChannelMinMaxObserver())
    obs.reset_min_max_vals()
    with pytest.raises(ObserverStateError):
        obs.calculate_qparams()
    obs(torch.randn(2, 2))
    assert obs.min_val.shape == (2,)


def test_empty_input_is_ignored() -> None:
    obs = observers.MinMaxObserver()
    x = torch.empty(0, 3)
    assert obs(x) is x
    assert torch.isinf(obs.min_val)


@pytest.mark.parametrize(
    "obs",
    [
        pytest.param(observers.PlaceholderObserver(), id="PlaceholderObserver"),
        pytest.param(observers.NoopObserver(), id="NoopObserver"),
        pytest.param(observers.ReuseInputObserver(), id="ReuseInputObserver"),
        pytest.param(observers.RecordingObserver(), id="RecordingObserver"),
    ],
)
def test_observers_without_qparams_refuse_clearly(obs) -> None:
    x = torch.ones(2)
    assert torch.equal(obs(x), x)
    with pytest.raises(ObserverStateError, match=type(obs).__name__):
        obs.calculate_qparams()


def test_fixed_qparams_observer_accepts_spec_defaults() -> None:
    """prepare passes a FixedQParamsQuantizationSpec's unset fields as None."""
    obs = observers.FixedQParamsObserver(
        scale=1 / 256, zero_point=-128, dtype=torch.int8, qscheme=None, quant_min=None, quant_max=None
    )
    assert (obs.qscheme, obs.quant_min, obs.quant_max) == (torch.per_tensor_affine, -128, 127)
