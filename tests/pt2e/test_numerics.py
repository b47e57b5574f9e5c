"""Numerics: converted == fake-quantized observed model; SQNR against float."""

from __future__ import annotations

import copy

import pytest
import torch
from support.models import MLP, Attention, SmallCNN, export
from support.numerics import sqnr
from support.reference_quantizer import ReferenceQuantizer

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.ops import storage_dtype
from pt2e.prepare import observer_nodes

MIN_SQNR_DB = 30.0

CASES = {
    "mlp": (lambda: MLP((16, 64, 32, 8)), lambda: torch.randn(8, 16)),
    "cnn": (SmallCNN, lambda: torch.randn(4, 3, 16, 16)),
    "attention": (Attention, lambda: torch.randn(2, 6, 32)),
}


def _calibrated(name):
    make_model, make_input = CASES[name]
    model = make_model().eval()
    calib = [make_input() for _ in range(4)]
    prepared = prepare_pt2e(export(model, calib[0]), ReferenceQuantizer())
    for x in calib:
        prepared(x)
    return model, prepared, make_input()


def _fake_quantize_observers(prepared):
    """Make every observer in ``prepared`` fake-quantize with its current qparams."""
    # a shared observer is one module under several names (torchao's naming): hook it once
    modules = dict(prepared.named_modules(remove_duplicate=False))
    hooked = set()
    for node in observer_nodes(prepared):
        obs = modules[node.target]
        if id(obs) in hooked:
            continue
        hooked.add(id(obs))
        scale, zp = obs.calculate_qparams()
        dtype = storage_dtype(obs.dtype)
        qmin, qmax = obs.quant_min, obs.quant_max

        def hook(mod, inputs, output, scale=scale, zp=zp, qmin=qmin, qmax=qmax, obs=obs):
            x = inputs[0]
            if scale.numel() > 1:
                return torch.fake_quantize_per_channel_affine(
                    x, scale, zp.to(torch.int32), obs.ch_axis, qmin, qmax)
            return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)

        obs.register_forward_hook(hook)
        del dtype


@pytest.mark.parametrize("name", list(CASES))
def test_converted_matches_fake_quantized_prepared(name):
    _, prepared, x = _calibrated(name)
    converted = convert_pt2e(copy.deepcopy(prepared))
    expected = converted(x)
    _fake_quantize_observers(prepared)
    torch.testing.assert_close(prepared(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_sqnr_against_float(name):
    model, prepared, x = _calibrated(name)
    converted = convert_pt2e(prepared)
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) >= MIN_SQNR_DB


def test_fold_quantize_does_not_change_numerics():
    _, prepared, x = _calibrated("cnn")
    folded = convert_pt2e(copy.deepcopy(prepared), fold_quantize=True)
    unfolded = convert_pt2e(prepared, fold_quantize=False)
    torch.testing.assert_close(folded(x), unfolded(x), atol=0, rtol=0)


def test_dynamic_quantization_tracks_input_range():
    model = MLP((16, 32, 8)).eval()
    x = torch.randn(4, 16)
    prepared = prepare_pt2e(export(model, x), ReferenceQuantizer(dynamic=True))
    converted = convert_pt2e(prepared)
    big = 100 * torch.randn(4, 16)  # far outside anything seen at prepare time
    assert sqnr(model(big), converted(big)) >= MIN_SQNR_DB
