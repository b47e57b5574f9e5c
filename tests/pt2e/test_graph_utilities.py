"""pt2e.partitions and the pt2e.graph equivalents of torchao's pt2e.utils helpers,
measured on the same small graphs against torchao (in a subprocess: importing torchao
changes Inductor's config) and against closed-form expectations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import pt2e
from pt2e.errors import ArgumentValueError
from pt2e.graph import (
    aten_graph_for_pattern,
    get_new_attr_name_with_prefix,
    is_conv_node,
    is_conv_transpose_node,
)
from pt2e.partitions import (
    collect_producer_nodes,
    find_sequential_partitions,
    get_equivalent_types,
    update_equivalent_types_dict,
)

_SCRIPT = r'''
import inspect, json, sys
import torch
import torch.nn.functional as F
from torch import nn

if sys.argv[1] == "torchao":
    from torchao.quantization.pt2e.graph_utils import (
        collect_producer_nodes, find_sequential_partitions, get_equivalent_types,
        update_equivalent_types_dict)
    from torchao.quantization.pt2e.utils import (
        _get_aten_graph_module_for_pattern as pattern_graph, _is_conv_node as is_conv,
        _is_conv_transpose_node as is_conv_t, get_new_attr_name_with_prefix)
else:
    from pt2e.partitions import (
        collect_producer_nodes, find_sequential_partitions, get_equivalent_types,
        update_equivalent_types_dict)
    from pt2e.graph import (aten_graph_for_pattern as pattern_graph, is_conv_node as is_conv,
                            is_conv_transpose_node as is_conv_t, get_new_attr_name_with_prefix)


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
        self.t = nn.ConvTranspose2d(2, 2, 1)
        self.register_buffer("w", torch.ones(2, 1, 1))

    def forward(self, x):
        a = F.relu(self.c1(x))          # conv -> functional relu
        b = torch.relu(self.c2(a))      # conv -> torch.relu (not an equivalent type)
        return self.t(b + a) * (self.w.abs() + 1)


out = {}
# strict export records each node's source (source_fn_stack), which partitions are made of
gm = torch.export.export(M().eval(), (torch.randn(1, 2, 3, 3),), strict=True).module()
names = lambda chains: sorted([[p.nodes[-1].name for p in c] for c in chains])
out["conv_relu"] = names(find_sequential_partitions(gm, [nn.Conv2d, nn.ReLU]))
out["relu_add"] = names(find_sequential_partitions(gm, [torch.relu, torch.add]))
out["filtered"] = [names(find_sequential_partitions(gm, [nn.ReLU, torch.add], filter_fn=f))
                   for f in (None, lambda n: n.name != "relu")]
try:
    find_sequential_partitions(gm, [nn.ReLU, F.relu])
    out["duplicate_type"] = "accepted"
except ValueError:
    out["duplicate_type"] = "ValueError"
out["signature"] = {f.__name__: list(inspect.signature(f).parameters) for f in (
    find_sequential_partitions, collect_producer_nodes, update_equivalent_types_dict)}
out["equivalent"] = sorted(sorted(getattr(t, "__name__", t) for t in g)
                           for g in get_equivalent_types())
saved = get_equivalent_types()
update_equivalent_types_dict([{nn.Conv2d}, {nn.ReLU, torch.relu}])
out["after_update"] = names(find_sequential_partitions(gm, [nn.Conv2d, nn.ReLU]))
update_equivalent_types_dict(saved)
try:
    update_equivalent_types_dict(None)
except ValueError:
    out["update_none"] = "ValueError"
out["producers"] = {n.name: (None if (r := collect_producer_nodes(n)) is None
                             else sorted({p.name for p in r}))
                    for n in gm.graph.nodes if n.op == "call_function"}
out["foldable"] = sorted(k for k, v in out["producers"].items() if v is not None)
out["is_conv"] = [n.name for n in gm.graph.nodes if is_conv(n)]
out["is_conv_t"] = [n.name for n in gm.graph.nodes if is_conv_t(n)]
m = nn.Module(); m.register_buffer("obs0", torch.ones(1))
out["attr_name"] = get_new_attr_name_with_prefix("obs")(m)
class Pattern(nn.Module):  # torchao's takes a module (quantizers wrap with WrapperModule)
    def forward(self, x, w):
        return F.linear(F.relu(x), w)


pg = pattern_graph(Pattern(), (torch.randn(2, 3), torch.randn(4, 3)))
out["pattern"] = [str(n.target) for n in pg.graph.nodes if n.op in ("call_function", "call_module")]
print(json.dumps(out))
'''


def _run(which: str) -> dict:
    res = subprocess.run([sys.executable, "-c", _SCRIPT, which], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def answers():
    pytest.importorskip("torchao.quantization.pt2e.graph_utils")
    return _run("torchao"), _run("ours")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["conv_relu", "relu_add", "filtered", "duplicate_type",
                                 "signature", "equivalent", "after_update", "update_none",
                                 "producers", "foldable", "is_conv", "is_conv_t", "attr_name", "pattern"])
def test_graph_utilities_answer_as_torchao_does(answers, key):
    theirs, ours = answers
    assert ours[key] == theirs[key]
    assert ours[key]  # not a vacuous match


def _graph():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return torch.nn.functional.relu(self.conv(x)) + 1

    return torch.export.export(M(), (torch.randn(1, 1, 2, 2),), strict=True).module()


def test_functional_equivalents_can_be_left_out():
    gm = _graph()
    assert len(find_sequential_partitions(gm, [torch.nn.Conv2d, torch.nn.ReLU])) == 1
    # F.relu is only found through nn.ReLU's equivalence group
    assert find_sequential_partitions(gm, [torch.nn.Conv2d, torch.nn.ReLU],
                                      include_functional_equivalent=False) == []


def test_update_equivalent_types_refuses_none_and_restores():
    saved = get_equivalent_types()
    with pytest.raises(ArgumentValueError, match="customized_equivalent_types=None"):
        update_equivalent_types_dict(None)
    assert get_equivalent_types() is saved


def test_collect_producer_nodes_stops_at_inputs_and_lists_each_node_once():
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    add = next(n for n in gm.graph.nodes if n.op == "call_function")
    assert collect_producer_nodes(add) is None
    g = torch.fx.Graph()
    w = g.get_attr("w")
    m = g.call_function(torch.mul, (w, w))
    assert collect_producer_nodes(m) == [m, w]


def test_public_helpers_classify_and_name():
    gm = _graph()
    assert [n.name for n in gm.graph.nodes if is_conv_node(n)] == ["conv2d"]
    assert not any(is_conv_transpose_node(n) for n in gm.graph.nodes)
    assert get_new_attr_name_with_prefix("conv.w")(gm) == "conv_w0"
    pattern = aten_graph_for_pattern(torch.add, (torch.randn(2), torch.randn(2)))
    assert [n.op for n in pattern.graph.nodes] == ["placeholder", "placeholder", "call_function",
                                                   "output"]


def test_exported_where_torchao_exports_them():
    for name in ("find_sequential_partitions", "get_equivalent_types",
                 "update_equivalent_types_dict", "bfs_trace_with_node_process"):
        assert getattr(pt2e, name) is getattr(pt2e.partitions, name)
