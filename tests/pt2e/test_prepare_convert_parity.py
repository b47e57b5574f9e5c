"""prepare/convert behaviour that torchao's users rely on, measured the same way on torchao and
on us (one script, run for each package in a subprocess: importing torchao changes Inductor's
config): observer module names, one dequantize per user, refusing tensor keyword arguments
and from_node on output observers. Closed-form checks follow, among them per-channel specs
without ch_axis (torchao fails on those)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support.models import export

from observers import MinMaxObserver, PerChannelMinMaxObserver
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import AnnotationError
from pt2e.graph import FROM_NODE_KEY
from pt2e.ops import CHOOSE_QPARAMS_OPS, DEQUANTIZE_OPS, QD, QUANTIZE_OPS
from pt2e.prepare import observer_nodes
from pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

_SCRIPT = r'''
import json, sys
import torch
from torch import nn

if sys.argv[1] == "torchao":
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation, QuantizationSpec, Quantizer)
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
else:
    from pt2e import prepare_pt2e, convert_pt2e
    from pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
    from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

def x86():
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())

class Shared(nn.Module):  # one conv output read by two convs, a fused add and a cat
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
    def forward(self, x):
        y = self.c1(x)
        return self.c2(y) + y, self.c3(y), torch.cat([y, y], 1)

torch.manual_seed(0)
x = torch.randn(1, 3, 4, 4)
out = {}
p = prepare_pt2e(torch.export.export(Shared().eval(), (x,)).module(), x86())
p(x)
mods = dict(p.named_modules(remove_duplicate=False))
obs = [n for n in p.graph.nodes if n.op == "call_module" and str(n.target).startswith("activation")]
# the name of each observer node, what it observes, and which names share one module
out["observer_names"] = sorted([str(n.target), n.args[0].name] for n in obs)
groups = {}
for n in obs:
    groups.setdefault(id(mods[str(n.target)]), []).append(str(n.target))
out["shared_modules"] = sorted(sorted(g) for g in groups.values())
out["output_observer_from_node"] = sorted(
    n.args[0].name for n in obs if n.meta.get("from_node")
    and n.meta["from_node"][-1].name in (n.args[0].name, str(n.target)) and n.users
    and all(u.op == "output" for u in n.users))
c = convert_pt2e(p)
def consumer(dq):
    return sorted(u.name for u in dq.users)
out["dq_per_user"] = sorted(
    [n.args[0].args[0].name, consumer(n)] for n in c.graph.nodes
    if "dequantize_per_tensor" in str(n.target) and "quantize_per_tensor" in str(n.args[0].target))

class Kwarg(Quantizer):  # annotate a node that takes a tensor by keyword
    def annotate(self, model):
        spec = get_default_x86_inductor_quantization_config().input_activation
        for n in model.graph.nodes:
            if n.target == torch.ops.aten.add.Tensor:
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={n.args[0]: spec}, _annotated=True)
        return model
    def validate(self, model):
        pass

class Add(nn.Module):
    def forward(self, x, y):
        return torch.add(x, y)
gm = torch.export.export(Add(), (torch.randn(2), torch.randn(2))).module()
add = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.add.Tensor)
add.kwargs = {"other": add.args[1]}  # what an out=/other= keyword tensor looks like
add.args = (add.args[0],)
gm.recompile()
try:
    prepare_pt2e(gm, Kwarg())
    out["tensor_kwarg"] = "accepted"
except (AssertionError, ValueError):  # torchao asserts; ours is an AnnotationError(ValueError)
    out["tensor_kwarg"] = "refused"
print(json.dumps(out))
'''


def _measure(package: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, package], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> tuple[dict, dict]:
    pytest.importorskip("torchao")
    return _measure("pt2e"), _measure("torchao")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["observer_names", "shared_modules", "output_observer_from_node",
                                 "dq_per_user", "tensor_kwarg"])
def test_same_as_torchao(measured, key):
    ours, theirs = measured
    assert ours[key] == theirs[key]
    assert ours[key]  # not a vacuous match


# --- closed-form expectations ------------------------------------------------------------------

class _Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1),
                                     torch.nn.Conv2d(4, 4, 1))

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y) + y, self.c3(y)


def _x86_prepared():
    x = torch.randn(1, 3, 4, 4)
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(export(_Shared().eval(), x), q)
    prepared(x)
    return prepared


def test_each_observer_node_has_its_own_name_and_shared_values_share_the_module():
    prepared = _x86_prepared()
    nodes = observer_nodes(prepared)
    names = [str(n.target) for n in nodes]
    assert sorted(names) == [f"activation_post_process_{i}" for i in range(len(nodes))]
    # conv1's output feeds conv2, conv3 and the fused add: one observer node per observed value
    observed = [n.args[0].name for n in nodes]
    assert len(observed) == len(set(observed))


def test_one_dequantize_per_annotated_user():
    converted = convert_pt2e(_x86_prepared())
    q = next(n for n in converted.graph.nodes
             if n.target == QD.quantize_per_tensor.default and n.args[0].name == "conv2d")
    users = [next(iter(dq.users)).name for dq in q.users]
    assert all(len(dq.users) == 1 for dq in q.users)
    assert sorted(users) == ["add", "conv2d_1", "conv2d_2"]


def test_observers_and_every_inserted_qdq_node_carry_from_node():
    prepared = _x86_prepared()
    for n in observer_nodes(prepared):
        assert n.meta.get(FROM_NODE_KEY), n.name
    converted = convert_pt2e(prepared)
    inserted = [n for n in converted.graph.nodes if n.op == "call_function" and (
        n.target in QUANTIZE_OPS | DEQUANTIZE_OPS | CHOOSE_QPARAMS_OPS)]
    assert len(inserted) >= 8
    for n in inserted:
        assert n.meta.get(FROM_NODE_KEY), n.name


class _OnlyWeight(Quantizer):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def annotate(self, model):
        for n in model.graph.nodes:
            if n.target == torch.ops.aten.linear.default:
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={n.args[1]: self.spec}, _annotated=True)
        return model

    def validate(self, model):
        pass


def test_per_channel_spec_without_axis_uses_the_observers_default_axis():
    # torchao 0.18 accepts the spec, then passes ch_axis=None to the observer, which fails
    # at calibration (TypeError: list indices must be integers); issue 18 asks for the
    # observer's default axis, so this is checked against the closed form
    spec = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
                            qscheme=torch.per_channel_symmetric,
                            observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    lin = torch.nn.Linear(3, 5)
    x = torch.randn(2, 3)
    prepared = prepare_pt2e(export(lin, x), _OnlyWeight(spec))
    prepared(x)
    converted = convert_pt2e(prepared)
    dq = next(n for n in converted.graph.nodes if n.target == QD.dequantize_per_channel.default)
    assert dq.args[3] == 0  # PerChannelMinMaxObserver's default ch_axis
    expected = lin.weight.detach().abs().amax(dim=1) / 127.0  # closed form, symmetric int8
    torch.testing.assert_close(getattr(converted, dq.args[1].target), expected)


def test_tensor_keyword_argument_of_an_annotated_node_is_refused():
    gm = export(torch.nn.Linear(2, 2), torch.randn(1, 2))
    lin = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    lin.kwargs = {"bias": lin.args[2]}
    lin.args = lin.args[:2]
    gm.recompile()
    spec = QuantizationSpec(dtype=torch.int8, observer_or_fake_quant_ctr=MinMaxObserver)
    with pytest.raises(AnnotationError, match=r"node 'linear'.*keyword argument 'bias='.*"
                                              r"pass tensors positionally"):
        prepare_pt2e(gm, _OnlyWeight(spec))


def test_a_user_whose_annotation_asks_for_nothing_keeps_the_shared_dequantize():
    from pt2e.convert import duplicate_dequantize_per_user

    g = torch.fx.Graph()
    x = g.placeholder("x")
    args = (0.1, 0, 0, 255, torch.uint8)
    dq = g.call_function(QD.dequantize_per_tensor.default,
                         (g.call_function(QD.quantize_per_tensor.default, (x, *args)), *args))
    spec = QuantizationSpec(dtype=torch.uint8, observer_or_fake_quant_ctr=MinMaxObserver)
    asks, marked, plain = (g.call_function(torch.ops.aten.relu.default, (dq,)) for _ in range(3))
    asks.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map={dq: spec})
    marked.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
    g.output((asks, marked, plain))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    # torchao's DuplicateDQPass copies only for a valid annotation (one naming a spec)
    assert duplicate_dequantize_per_user(gm) == 1
    assert asks.args[0] is not dq and marked.args[0] is dq and plain.args[0] is dq
