"""LearnableFakeQuantize: gradients reach scale/zero_point; numerics match torchao's."""

from __future__ import annotations

import warnings

import pytest
import torch

import observers
from observers import LearnableFakeQuantize, MovingAverageMinMaxObserver, ObserverStateError


def _make(**kwargs) -> LearnableFakeQuantize:
    return LearnableFakeQuantize(MovingAverageMinMaxObserver, **kwargs)


def test_gradient_flows_to_scale_and_zero_point() -> None:
    fq = _make(quant_min=0, quant_max=255)
    fq(torch.linspace(-1.0, 1.0, 16))
    fq.enable_range_learning()
    assert fq.scale.requires_grad and fq.zero_point.requires_grad
    x = torch.linspace(-3.0, 3.0, 16, requires_grad=True)  # partly outside the range
    fq(x).pow(2).sum().backward()
    assert fq.scale.grad is not None and fq.scale.grad.abs().sum() > 0
    assert fq.zero_point.grad is not None and fq.zero_point.grad.abs().sum() > 0
    assert x.grad is not None


def test_training_step_changes_scale_and_convert_sees_it() -> None:
    fq = _make(quant_min=-8, quant_max=7, dtype=torch.qint8)
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    fq(x)
    fq.enable_range_learning()
    before = fq.calculate_qparams()[0].clone()
    optimizer = torch.optim.SGD(fq.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        (fq(x) - x).pow(2).sum().backward()
        optimizer.step()
    scale, _ = fq.calculate_qparams()
    assert not torch.equal(scale, before)
    assert torch.equal(
        fq(x),
        torch.fake_quantize_per_tensor_affine(
            x, scale, fq.calculate_qparams()[1].int(), fq.quant_min, fq.quant_max
        ),
    )


def test_scale_below_eps_is_clamped_consistently() -> None:
    fq = _make()
    x = torch.linspace(-1.0, 1.0, 8)
    fq(x)
    fq.disable_observer()
    fq.scale.data.fill_(-1.0)  # an optimizer overshoot
    scale, zero_point = fq.calculate_qparams()
    assert scale.item() == pytest.approx(torch.finfo(torch.float32).eps)
    assert torch.equal(
        fq(x), torch.fake_quantize_per_tensor_affine(x, scale, zero_point.int(), 0, 255)
    )


def test_grad_scaling_shrinks_qparam_gradients() -> None:
    grads = []
    for use_grad_scaling in (False, True):
        fq = _make(use_grad_scaling=use_grad_scaling)
        fq(torch.linspace(-1.0, 1.0, 16))
        fq.enable_range_learning()
        fq(torch.linspace(-3.0, 3.0, 16)).sum().backward()
        grads.append(fq.scale.grad.abs().item())
    assert grads[1] == pytest.approx(grads[0] / (16 * 255) ** 0.5, rel=1e-5)


def test_matches_torchao_learnable_fake_quantize() -> None:
    ref_module = pytest.importorskip("torchao.quantization.pt2e")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_module.LearnableFakeQuantize(
            ref_module.MovingAverageMinMaxObserver, quant_min=0, quant_max=255
        )
    ours = _make(quant_min=0, quant_max=255)
    x = torch.randn(32, generator=torch.Generator().manual_seed(3)) * 2
    for module in (ours, ref):
        module(x)
        module.enable_range_learning()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa * 1.5), ref(xb * 1.5)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    torch.testing.assert_close(ours.scale.grad, ref.scale.grad)
    torch.testing.assert_close(ours.zero_point.grad, ref.zero_point.grad)
    torch.testing.assert_close(xa.grad, xb.grad)


def test_calculate_qparams_before_any_data_raises() -> None:
    with pytest.raises(ObserverStateError, match="LearnableFakeQuantize"):
        _make().calculate_qparams()


def test_enable_observer_turns_learning_off() -> None:
    fq = _make()
    fq(torch.ones(2))
    fq.enable_range_learning()
    assert int(fq.observer_enabled) == 0
    fq.enable_observer()
    assert int(fq.learning_enabled) == 0
    assert not fq.scale.requires_grad


def test_state_dict_loads_into_fresh_module() -> None:
    trained = _make()
    trained(torch.linspace(-1.0, 2.0, 8))
    trained.enable_range_learning()
    fresh = _make()
    fresh.load_state_dict(trained.state_dict())
    for a, b in zip(trained.calculate_qparams(), fresh.calculate_qparams()):
        assert torch.equal(a, b)
    assert fresh.scale.requires_grad  # learning_enabled travelled with the state dict


def test_float_qparams_rejected() -> None:
    with pytest.raises(observers.QuantizationConfigError, match="float"):
        LearnableFakeQuantize(
            observers.MovingAveragePerChannelMinMaxObserver,
            qscheme=torch.per_channel_affine_float_qparams,
        )
