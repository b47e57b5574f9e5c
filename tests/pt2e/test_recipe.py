"""The one-call recipe: family detection, the steps it keeps, and the gain it reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pt2e import ArgumentValueError, quantize_with_recipe
from pt2e.recipe import RecipeReport
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from tests.support.numerics import sqnr


class OutlierBlock(nn.Module):
    """layer_norm with three huge channels -> linear -> gelu -> linear, plus a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight[:3] = torch.tensor([40.0, -25.0, 60.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return y + self.down(nn.functional.gelu(self.up(y)))


def _quantizer() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def _data(shape: tuple[int, ...], n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_transformer_recipe_applies_smoothquant_and_gains() -> None:
    m, data = OutlierBlock().eval(), _data((32, 16))
    gm = torch.export.export(m, (data[0],)).module()
    result = quantize_with_recipe(gm, _quantizer(), data)
    report = result.report
    assert isinstance(report, RecipeReport) and report.family == "transformer"
    applied = [s.name for s in report.steps if s.applied]
    assert applied[0] == "default flow" and any(n.startswith("SmoothQuant") for n in applied)
    # the report's figures are the model's: recompute the final SQNR independently
    ref = torch.cat([m(x) for x in data]).detach()
    final = sqnr(ref, torch.cat([result.model(x) for x in data]))
    assert final == pytest.approx(report.final, abs=0.05)
    assert report.final > report.baseline + 6.0
    assert report.calibration_runs == 3          # default flow + one per alpha
    assert "recipe 'transformer'" in str(report)


def test_auto_picks_convnet_for_a_conv_model() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    data = _data((2, 3, 8, 8), n=2)
    gm = torch.export.export(m, (data[0],)).module()
    report = quantize_with_recipe(gm, _quantizer(), data, alpha=0.5).report
    assert report.family == "convnet"
    assert [s.name for s in report.steps] == [
        "default flow", "activation range margin", "cross-layer equalization", "SmoothQuant (alpha 0.5)",
        "GPTQ weight rounding", "bias correction"]
    assert report.final >= report.baseline


def test_convnet_default_tries_three_alphas() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    data = _data((2, 3, 8, 8), n=2)
    gm = torch.export.export(m, (data[0],)).module()
    report = quantize_with_recipe(gm, _quantizer(), data, family="convnet").report
    assert [s.name for s in report.steps if s.name.startswith("SmoothQuant")] == [
        "SmoothQuant (alpha 0.5)", "SmoothQuant (alpha 0.65)", "SmoothQuant (alpha 0.8)"]
    assert report.calibration_runs == 5          # default flow + equalization + one per alpha


def test_report_counts_the_float_muls_smoothquant_inserted() -> None:
    # the layer norm also feeds the residual, and gelu is not homogeneous: both groups need a mul
    m, data = OutlierBlock().eval(), _data((32, 16))
    gm = torch.export.export(m, (data[0],)).module()
    steps = quantize_with_recipe(gm, _quantizer(), data, alpha=0.8).report.steps
    (smooth,) = [s for s in steps if s.name.startswith("SmoothQuant")]
    assert smooth.detail == "2 layer groups scaled (2 through an inserted float mul)"
    # conv -> bn -> relu -> conv: the batch norm (not folded before smoothing) stops the fold
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    cdata = _data((2, 3, 8, 8), n=2)
    csteps = quantize_with_recipe(torch.export.export(conv, (cdata[0],)).module(), _quantizer(), cdata,
                                  family="convnet", alpha=0.5).report.steps
    (csmooth,) = [s for s in csteps if s.name.startswith("SmoothQuant")]
    assert csmooth.detail == "2 layer groups scaled (2 through an inserted float mul)"


def test_unknown_family_is_a_clear_error() -> None:
    gm = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    with pytest.raises(ArgumentValueError, match="family"):
        quantize_with_recipe(gm, _quantizer(), [torch.randn(1, 2)], family="vision")
