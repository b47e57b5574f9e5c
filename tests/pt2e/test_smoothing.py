"""SmoothQuant: the paper's scales, the float model's identity, and the SQNR it buys."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pt2e import ArgumentValueError, convert_pt2e, prepare_pt2e
from pt2e.smoothing import SmoothQuant, smoothing_scales
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from tests.support.numerics import sqnr


class NormLinear(nn.Module):
    """layer_norm -> linear, with a few huge activation channels; ``residual`` adds a
    second reader of the norm's output (so the inverse scale cannot be folded)."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)
        self.residual = residual
        with torch.no_grad():
            self.norm.weight[:3] = torch.tensor([40.0, -25.0, 60.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return self.fc(y) + y if self.residual else self.fc(y)


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)
        with torch.no_grad():
            self.a.weight[:2] *= 30

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class ConvPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight[:2] *= 30

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _data(shape: tuple[int, ...], n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _export(m: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(m.eval(), (x,)).module()


def test_scales_follow_the_paper() -> None:
    m, data = NormLinear(), _data((8, 16))
    x_max = torch.cat([m.norm(x).detach() for x in data]).abs().amax(0)
    w_max = m.fc.weight.detach().abs().amax(0)
    expected = x_max.sqrt() / w_max.sqrt()                    # alpha = 0.5
    gm = _export(m, data[0])
    SmoothQuant(data, alpha=0.5)(gm)
    fc = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    new_w = getattr(gm, str(fc.args[1].target))
    torch.testing.assert_close(new_w, m.fc.weight.detach() * expected, rtol=1e-5, atol=1e-6)


def test_smoothing_scales_alpha_extremes() -> None:
    x, w = torch.tensor([4.0, 9.0]), torch.tensor([2.0, 3.0])
    torch.testing.assert_close(smoothing_scales(x, w, 1.0), x)
    torch.testing.assert_close(smoothing_scales(x, w, 0.0), 1 / w)


@pytest.mark.parametrize("model, shape, how", [
    (NormLinear(), (8, 16), "folded into layer_norm"),
    (NormLinear(residual=True), (8, 16), "mul inserted"),
    (TwoLinears(), (8, 8), "folded into linear"),
    (ConvPair(), (2, 3, 8, 8), "folded into conv2d"),
], ids=["fold-layer-norm", "mul-before-linear", "fold-linear-through-relu", "fold-conv"])
def test_smoothed_float_model_is_unchanged(model: nn.Module, shape: tuple[int, ...], how: str) -> None:
    data = _data(shape)
    gm = _export(model, data[0])
    sq = SmoothQuant(data, alpha=0.5, convs=True)
    assert sq(gm).modified
    assert any(s.how.startswith(how) for s in sq.layers), [s.how for s in sq.layers]
    for x in data:
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)


def _quantized_sqnr(gm: torch.fx.GraphModule, float_model: nn.Module, data: list[torch.Tensor]) -> float:
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(copy.deepcopy(gm), q)
    for x in data:
        prepared(x)
    converted = convert_pt2e(prepared)
    return sqnr(torch.cat([float_model(x) for x in data]), torch.cat([converted(x) for x in data]))


def test_smoothing_improves_sqnr_on_outlier_channels() -> None:
    m, data = NormLinear(residual=False), _data((32, 16))
    gm = _export(m, data[0])
    before = _quantized_sqnr(gm, m, data)
    SmoothQuant(data, alpha=0.5)(gm)
    after = _quantized_sqnr(gm, m, data)
    assert after > before + 6.0, (before, after)


def test_bad_alpha_is_a_clear_error() -> None:
    with pytest.raises(ArgumentValueError, match="alpha"):
        SmoothQuant([torch.randn(2, 2)], alpha=1.5)
