"""convert_pt2e unties a bias constant shared by two layers (pt2e/untie.py)."""

from __future__ import annotations

import torch
from torch import nn

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.graph import attr_value
from pt2e.ops import LINEAR_OPS
from pt2e.untie import untie_shared_bias
from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def _bias_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n.args[2] for n in gm.graph.nodes if n.op == "call_function" and n.target in LINEAR_OPS]


def test_converted_graph_gives_each_layer_its_own_bias_constant():
    model = Twice().eval()
    x = torch.randn(4, 8)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    prepared(x)
    converted = convert_pt2e(prepared)
    biases = _bias_nodes(converted)
    assert len(biases) == 2
    assert len({b.target for b in biases}) == 2, [b.target for b in biases]
    for b in biases:
        assert torch.equal(attr_value(converted, str(b.target)), model.fc.bias.detach())


def test_untying_changes_no_output_and_leaves_unshared_biases_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    gm = torch.export.export(model, (torch.randn(2, 8),)).module()
    assert untie_shared_bias(gm) == 0
    twice = torch.export.export(Twice(), (torch.randn(3, 8),)).module()
    x = torch.randn(3, 8)
    before = twice(x)
    assert untie_shared_bias(twice) == 1
    assert torch.equal(twice(x), before)
