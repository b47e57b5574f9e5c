"""Fake quantization: straight-through gradients, switches, and the qparams-consistency invariant."""

from __future__ import annotations

import pytest
import torch

import observers
from observers import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)

fq_ref = pytest.importorskip("torch.ao.quantization.fake_quantize")
obs_ref = pytest.importorskip("torch.ao.quantization.observer")

pytestmark = pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")

INT4_SYMMETRIC = dict(
    quant_min=-8, quant_max=7, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
)

FAKE_QUANTS = [
    pytest.param(observers.default_fake_quant, id="default_fake_quant"),
    pytest.param(observers.default_weight_fake_quant, id="default_weight_fake_quant"),
    pytest.param(
        observers.default_per_channel_weight_fake_quant, id="default_per_channel_weight_fake_quant"
    ),
    pytest.param(
        observers.default_histogram_fake_quant.with_args(bins=64), id="default_histogram_fake_quant"
    ),
    pytest.param(observers.default_embedding_fake_quant, id="default_embedding_fake_quant"),
    pytest.param(observers.default_fused_act_fake_quant, id="default_fused_act_fake_quant"),
    pytest.param(observers.default_fused_wt_fake_quant, id="default_fused_wt_fake_quant"),
    pytest.param(
        observers.default_fused_per_channel_wt_fake_quant,
        id="default_fused_per_channel_wt_fake_quant",
    ),
    pytest.param(
        observers.fused_wt_fake_quant_range_neg_127_to_127,
        id="fused_wt_fake_quant_range_neg_127_to_127",
    ),
    pytest.param(
        FusedMovingAvgObsFakeQuantize.with_args(**INT4_SYMMETRIC), id="fused-int4-symmetric"
    ),
    pytest.param(
        FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            ch_axis=0,
            **dict(INT4_SYMMETRIC, qscheme=torch.per_channel_symmetric),
        ),
        id="fused-int4-per-channel-symmetric",
    ),
    pytest.param(observers.default_fixed_qparams_range_0to1_fake_quant, id="fixed_qparams_0to1"),
    pytest.param(
        observers.LearnableFakeQuantize.with_args(observer=MovingAverageMinMaxObserver),
        id="learnable-affine",
    ),
    pytest.param(
        observers.LearnableFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=-8,
            quant_max=7,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        ),
        id="learnable-int4-per-channel",
    ),
]


def _reference_fake_quant(fq: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Fake quantize ``x`` with exactly the qparams convert would take from ``fq``."""
    scale, zero_point = fq.calculate_qparams()
    if observers.is_per_channel(fq.qscheme):
        zp = zero_point if observers.is_float_qparams(fq.qscheme) else zero_point.int()
        return torch.fake_quantize_per_channel_affine(
            x, scale, zp, fq.ch_axis, fq.quant_min, fq.quant_max
        )
    return torch.fake_quantize_per_tensor_affine(
        x, scale, zero_point.int(), fq.quant_min, fq.quant_max
    )


@pytest.mark.parametrize("make", FAKE_QUANTS)
def test_forward_qparams_equal_calculate_qparams_after_training(make) -> None:
    fq = make()
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        fq(torch.randn(4, 6, generator=gen) * (1 + step) - 0.3 * step)
    fq.apply(observers.disable_observer)
    x = torch.randn(4, 6, generator=gen) * 3
    torch.testing.assert_close(fq(x), _reference_fake_quant(fq, x), rtol=0, atol=0)
    if isinstance(fq, FakeQuantize):
        scale, zero_point = fq.calculate_qparams()
        assert torch.equal(fq.scale, scale)
        assert torch.equal(fq.zero_point, zero_point.to(fq.zero_point.dtype))


def test_fused_kernel_would_break_the_invariant() -> None:
    """pytorch/ao#4824: torch's fused kernel picks a different symmetric scale than convert reads."""
    x = torch.tensor([-1.149422, 2.533506])
    ours = FusedMovingAvgObsFakeQuantize(**INT4_SYMMETRIC)
    ours(x)
    assert ours.scale.item() == pytest.approx(0.337801, abs=1e-6)
    assert torch.equal(ours.scale, ours.calculate_qparams()[0])
    kernel_scale = torch.tensor([1.0])
    torch.fused_moving_avg_obs_fake_quant(
        x,
        torch.tensor([1]),
        torch.tensor([1]),
        torch.tensor(float("inf")),
        torch.tensor(float("-inf")),
        kernel_scale,
        torch.tensor([0], dtype=torch.int),
        0.01,
        -8,
        7,
        -1,
        False,
        True,
    )
    assert kernel_scale.item() == pytest.approx(0.361929, abs=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "default_fake_quant",
        "default_weight_fake_quant",
        "default_per_channel_weight_fake_quant",
        "default_embedding_fake_quant",
        "default_fixed_qparams_range_neg1to1_fake_quant",
    ],
)
def test_fake_quant_matches_torch_ao(name: str) -> None:
    ours, ref = getattr(observers, name)(), getattr(fq_ref, name)()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 6, generator=gen)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    for attr in ("quant_min", "quant_max", "dtype", "qscheme", "ch_axis", "is_per_channel"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert torch.equal(ours.scale, ref.scale)
    assert torch.equal(ours.zero_point, ref.zero_point)


def test_fused_matches_unfused_torch_ao_fake_quant() -> None:
    ours = observers.default_fused_act_fake_quant()
    ref = fq_ref.FakeQuantize(
        observer=obs_ref.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
    )
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(8, generator=gen)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    assert ours.fake_quant_enabled.dtype == torch.long


def test_straight_through_gradient() -> None:
    fq = FakeQuantize(quant_min=0, quant_max=255)
    fq(torch.tensor([-1.0, 1.0]))
    fq.disable_observer()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # zero outside the clamped range


def test_disable_fake_quant_is_identity_but_still_observes() -> None:
    fq = FakeQuantize()
    fq.apply(observers.disable_fake_quant)
    x = torch.tensor([0.1234, -5.0])
    assert torch.equal(fq(x), x)
    assert fq.activation_post_process.min_val.item() == -5.0
    fq.apply(observers.enable_fake_quant)
    assert not torch.equal(fq(x), x)


def test_disable_observer_freezes_qparams() -> None:
    fq = FakeQuantize()
    fq(torch.tensor([-1.0, 1.0]))
    scale = fq.scale.clone()
    fq.apply(observers.disable_observer)
    fq(torch.tensor([-100.0, 100.0]))
    assert torch.equal(fq.scale, scale)
    assert fq.activation_post_process.max_val.item() == 1.0
    fq.apply(observers.enable_observer)
    fq(torch.tensor([-100.0, 100.0]))
    assert fq.scale.item() > scale.item()


def test_switch_functions_ignore_other_modules() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), observers.MinMaxObserver())
    for fn in (
        observers.enable_fake_quant,
        observers.disable_fake_quant,
        observers.enable_observer,
        observers.disable_observer,
        observers.enable_range_learning,
        observers.disable_range_learning,
    ):
        model.apply(fn)


def test_fixed_qparams_fake_quant_shares_observer_buffers() -> None:
    fq = observers.default_fixed_qparams_range_neg1to1_fake_quant()
    assert fq.scale is fq.activation_post_process.scale
    assert fq(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [-1.0, 0.0, 127 / 128]


def test_fixed_qparams_fake_quant_rejects_other_observers() -> None:
    with pytest.raises(observers.QuantizationConfigError, match="FixedQParamsObserver"):
        observers.FixedQParamsFakeQuantize(observer=observers.MinMaxObserver)


def test_fake_quant_attributes() -> None:
    fq = observers.default_per_channel_weight_fake_quant()
    assert (fq.quant_min, fq.quant_max, fq.dtype, fq.qscheme, fq.ch_axis, fq.is_dynamic) == (
        -128,
        127,
        torch.qint8,
        torch.per_channel_symmetric,
        0,
        False,
    )
    assert isinstance(fq.activation_post_process, MovingAveragePerChannelMinMaxObserver)
    dynamic = observers.default_dynamic_fake_quant()
    assert dynamic.is_dynamic and dynamic.activation_post_process.averaging_constant == 1
    assert (observers.default_fake_quant().quant_min, observers.default_fake_quant().quant_max) == (
        0,
        127,
    )
