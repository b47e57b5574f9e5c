"""Cross-layer equalization: the paper's scale identity, functional equivalence, SQNR."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pt2e import ArgumentValueError, convert_pt2e, prepare_pt2e
from pt2e.equalization import CrossLayerEqualization
from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.support.numerics import sqnr

conv = torch.ops.aten.conv2d.default


class Pair(nn.Module):
    """conv -> relu -> conv with output-channel ranges of the first over 4 decades, and the
    second compensating (as a folded batch norm leaves them): every channel matters."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            gains = torch.logspace(-2, 2, 8)
            self.a.weight.mul_(gains.view(8, 1, 1, 1))
            self.a.bias.mul_(gains)
            self.b.weight.div_(gains.view(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class DepthwiseSeparable(nn.Module):
    """conv-bn-relu -> depthwise conv-bn-relu -> pointwise conv: a MobileNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 6, 1))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for bn in (self.body[1], self.body[4]):
                bn.weight.copy_(torch.randn(8, generator=g).mul(2).exp())
                bn.running_var.uniform_(0.5, 2.0, generator=g)
                bn.running_mean.normal_(generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _weights(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    return [getattr(gm, str(n.args[1].target)).detach() for n in gm.graph.nodes if n.target == conv]


def _data(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_scale_identity_of_the_paper() -> None:
    m, x = Pair().eval(), _data(1)[0]
    w1, w2 = m.a.weight.detach(), m.b.weight.detach()
    r1 = w1.abs().flatten(1).amax(1)                       # range of output channel i of layer 1
    r2 = w2.abs().transpose(0, 1).flatten(1).amax(1)      # range of input channel i of layer 2
    gm = torch.export.export(m, (x,)).module()
    CrossLayerEqualization()(gm)
    new1, new2 = _weights(gm)
    s = (r1 / r2).sqrt()                                   # = sqrt(r1 r2) / r2
    torch.testing.assert_close(new1, w1 / s.view(8, 1, 1, 1))
    torch.testing.assert_close(new2, w2 * s.view(1, 8, 1, 1))
    # both layers now share the range sqrt(r1 r2) in every channel
    torch.testing.assert_close(new1.abs().flatten(1).amax(1), (r1 * r2).sqrt())
    torch.testing.assert_close(new2.abs().transpose(0, 1).flatten(1).amax(1), (r1 * r2).sqrt())


@pytest.mark.parametrize("model", [Pair(), DepthwiseSeparable()], ids=["conv-relu-conv", "depthwise-separable"])
def test_equalized_float_model_is_unchanged(model: nn.Module) -> None:
    data = _data()
    gm = torch.export.export(model.eval(), (data[0],)).module()
    cle = CrossLayerEqualization()
    assert cle(gm).modified and cle.layers
    for x in data:
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)


def test_depthwise_chain_is_equalized_both_ways() -> None:
    m = DepthwiseSeparable().eval()
    gm = torch.export.export(m, (_data(1)[0],)).module()
    CrossLayerEqualization(iterations=50)(gm)
    w1, wd, w3 = _weights(gm)
    # the middle (depthwise) layer meets both neighbours: its range equals each one's
    torch.testing.assert_close(wd.abs().flatten(1).amax(1), w3.abs().transpose(0, 1).flatten(1).amax(1),
                               rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(w1.abs().flatten(1).amax(1), wd.abs().flatten(1).amax(1), rtol=1e-2, atol=1e-4)


def test_equalization_improves_sqnr() -> None:
    """The paper's setting: per-tensor weights, where one wide channel ruins the others."""
    m, data = Pair().eval(), _data()
    gm = torch.export.export(m, (data[0],)).module()

    def quantized_sqnr(g: torch.fx.GraphModule) -> float:
        prepared = prepare_pt2e(copy.deepcopy(g), XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=False)))
        for x in data:
            prepared(x)
        q = convert_pt2e(prepared)
        return sqnr(torch.cat([m(x) for x in data]), torch.cat([q(x) for x in data]))

    before = quantized_sqnr(gm)
    CrossLayerEqualization()(gm)
    assert quantized_sqnr(gm) > before + 6.0


def test_bad_iterations_is_a_clear_error() -> None:
    with pytest.raises(ArgumentValueError, match="iterations"):
        CrossLayerEqualization(iterations=0)
