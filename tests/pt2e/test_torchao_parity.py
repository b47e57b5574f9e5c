"""Quantizer-author surface and metadata behaviour, measured the same way on torchao and on us.

One script runs against either package in a subprocess (importing torchao changes
Inductor's config, so never in this process); the two JSON answers must agree.
Behaviour that is ours alone is checked against closed-form expectations below.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support.models import export

import pt2e
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import ExportedTrainEvalError, PipelineStateError
from pt2e.graph import USER_META_KEYS
from pt2e.ops import CHOOSE_QPARAMS_OPS, DEQUANTIZE_OPS, QD, QUANTIZE_OPS
from pt2e.quantizer import (
    Q_ANNOTATION_KEY,
    DuplicateDQPass,
    PortNodeMetaForQDQ,
    QuantizationAnnotation,
    WrapperModule,
    get_annotation,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    model_is_exported,
)
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

_SCRIPT = r'''
import inspect, json, sys
import torch
import torch.nn.functional as F
from torch import nn

if sys.argv[1] == "torchao":
    from torchao.quantization.pt2e import WrapperModule
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.export_utils import model_is_exported
    import torchao.quantization.pt2e.quantizer as Q
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
else:
    from pt2e import prepare_pt2e, convert_pt2e, WrapperModule, move_exported_model_to_eval
    from pt2e.quantizer import model_is_exported
    import pt2e.quantizer as Q
    from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

out = {}
fns = ["get_input_act_qspec", "get_output_act_qspec", "get_weight_qspec", "get_bias_qspec",
       "is_valid_annotation"]
out["signatures"] = {n: list(inspect.signature(getattr(Q, n)).parameters) for n in fns}
out["signatures"]["WrapperModule"] = list(inspect.signature(WrapperModule).parameters)
out["signatures"]["model_is_exported"] = list(inspect.signature(model_is_exported).parameters)

cfg = get_default_x86_inductor_quantization_config()
out["keyword_call"] = [Q.get_input_act_qspec(quantization_config=cfg) is cfg.input_activation,
                       Q.get_weight_qspec(quantization_config=cfg) is cfg.weight,
                       Q.get_bias_qspec(quantization_config=cfg) is None,
                       Q.get_output_act_qspec(quantization_config=None) is None]

g = torch.fx.Graph()
x = g.placeholder("x")
A, spec = Q.QuantizationAnnotation, cfg.input_activation
out["is_valid_annotation"] = [Q.is_valid_annotation(a) for a in (
    None, A(), A(_annotated=True), A(output_qspec=spec), A(input_qspec_map={x: spec}),
    A(input_qspec_map={x: None}))]

relu = WrapperModule(torch.relu)
out["wrapper_forward"] = torch.equal(relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
out["model_is_exported"] = [
    model_is_exported(torch.export.export(relu, (torch.randn(3),)).module()),
    model_is_exported(torch.fx.symbolic_trace(nn.ReLU())), model_is_exported(nn.ReLU())]

class CNN(nn.Module):  # modules, whose source_fn torchao's partition matcher reads
    def __init__(self):
        super().__init__()
        self.c1, self.relu, self.pool = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.lin = nn.Conv2d(4, 4, 1), nn.Linear(3, 3)
    def forward(self, x):
        return self.lin(self.c2(self.pool(self.relu(self.c1(x)))))

torch.manual_seed(0)
gm = torch.export.export(CNN().eval(), (torch.randn(1, 3, 8, 8),)).module()
q = X86InductorQuantizer().set_global(cfg)
gm = q.transform_for_annotation(gm)
q.annotate(gm)
KEY = "quantization_annotation"
out["flags"] = {n.name: bool(n.meta[KEY]._is_output_of_quantized_pattern)
                for n in gm.graph.nodes if KEY in n.meta}

qd = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
      "dequantize_per_channel", "choose_qparams")
def tags(dynamic):
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    gm = torch.export.export(m, (x,)).module()
    for n in gm.graph.nodes:
        if n.op in ("call_function", "get_attr"):
            n.meta["quantization_tag"] = "tag_" + n.name
    qz = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
    p = prepare_pt2e(gm, qz)
    p(x)
    c = convert_pt2e(p)
    names = {n: str(n.target).split(".") for n in c.graph.nodes}
    return sorted([names[n][1], n.meta.get("quantization_tag")] for n in c.graph.nodes
                  if names[n][0] == "quantized_decomposed" and names[n][1] in qd)
out["tags_static"], out["tags_dynamic"] = tags(False), tags(True)

class Drop(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, training=True, inplace=True) + 0
ones = torch.ones(64)
gm = torch.export.export(Drop(), (ones,)).module()
out["inplace_dropout_in_graph"] = any(n.target == torch.ops.aten.dropout_.default
                                      for n in gm.graph.nodes)
out["inplace_dropout_eval"] = torch.equal(move_exported_model_to_eval(gm)(ones), ones)
p = prepare_pt2e(torch.export.export(nn.Linear(4, 4), (torch.randn(2, 4),)).module(),
                 X86InductorQuantizer().set_global(cfg))
try:
    p.eval()
    out["eval_raises"] = None
except NotImplementedError:
    out["eval_raises"] = "NotImplementedError"
print(json.dumps(out))
'''


def _measure(package: str) -> dict:
    # torchao changes Inductor's config on import: never in this process
    done = subprocess.run([sys.executable, "-c", _SCRIPT, package], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> tuple[dict, dict]:
    pytest.importorskip("torchao")
    return _measure("pt2e"), _measure("torchao")


@pytest.mark.parametrize("key", [
    "signatures", "keyword_call", "is_valid_annotation", "wrapper_forward", "model_is_exported",
    "flags", "tags_static", "tags_dynamic", "inplace_dropout_in_graph", "inplace_dropout_eval",
    "eval_raises",
])
def test_same_as_torchao(measured, key):
    ours, theirs = measured
    assert ours[key] == theirs[key]


# --- closed-form expectations ------------------------------------------------------------------

def test_qspec_getters_take_quantization_config_by_keyword():
    cfg = get_default_x86_inductor_quantization_config()
    assert get_input_act_qspec(quantization_config=cfg) is cfg.input_activation
    assert get_output_act_qspec(quantization_config=cfg) is cfg.output_activation
    assert get_weight_qspec(quantization_config=cfg) is cfg.weight
    assert get_bias_qspec(quantization_config=cfg) is None


def test_wrapper_module_exports_a_function():
    gm = torch.export.export(WrapperModule(torch.add), (torch.ones(2), torch.ones(2))).module()
    assert model_is_exported(gm)
    assert torch.equal(gm(torch.ones(2), torch.ones(2)), torch.full((2,), 2.0))
    assert pt2e.WrapperModule is WrapperModule


def _shared_dq_graph(dynamic: bool) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]]:
    g = torch.fx.Graph()
    x = g.placeholder("x")
    if dynamic:
        cq = g.call_function(QD.choose_qparams.tensor, (x, 0, 255, 1e-5, torch.uint8))
        s = g.call_function(__import__("operator").getitem, (cq, 0))
        z = g.call_function(__import__("operator").getitem, (cq, 1))
        args: tuple = (s, z, 0, 255, torch.uint8)
        q = g.call_function(QD.quantize_per_tensor.tensor, (x, *args))
        dq = g.call_function(QD.dequantize_per_tensor.tensor, (q, *args))
    else:
        args = (0.1, 0, 0, 255, torch.uint8)
        q = g.call_function(QD.quantize_per_tensor.default, (x, *args))
        dq = g.call_function(QD.dequantize_per_tensor.default, (q, *args))
    users = [g.call_function(op, (dq,)) for op in
             (torch.ops.aten.relu.default, torch.ops.aten.neg.default, torch.ops.aten.abs.default)]
    for u in users[:2]:  # the third stays unannotated
        u.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={x: None})
    g.output(tuple(users))
    return torch.fx.GraphModule(torch.nn.Module(), g), users


def _dequantizes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.target in DEQUANTIZE_OPS]


def test_duplicate_dq_pass_gives_each_annotated_user_its_own_dequantize():
    gm, users = _shared_dq_graph(dynamic=False)
    result = DuplicateDQPass()(gm)
    assert result.modified
    dqs = _dequantizes(gm)
    assert len(dqs) == 3  # a copy per annotated user; the unannotated one keeps the original
    assert len({u.args[0] for u in users}) == 3
    assert gm(torch.tensor([1.0]))[0].item() == pytest.approx(1.0)


def test_duplicate_dq_pass_leaves_dynamic_chains_shared():
    gm, _ = _shared_dq_graph(dynamic=True)
    assert not DuplicateDQPass()(gm).modified
    assert len(_dequantizes(gm)) == 1


def _converted_tagged(dynamic: bool) -> torch.fx.GraphModule:
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    x = torch.randn(2, 8)
    gm = export(m, x)
    for n in gm.graph.nodes:
        if n.op == "call_function":
            n.meta["quantization_tag"] = "tag_" + n.name
    cfg = get_default_x86_inductor_quantization_config(is_dynamic=dynamic)
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(cfg))
    prepared(x)
    return convert_pt2e(prepared)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_quantization_tag_is_ported_to_the_consumers_qdq(dynamic):
    gm = _converted_tagged(dynamic)
    linear = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    dqs = [a for a in linear.all_input_nodes if a.target in DEQUANTIZE_OPS]
    assert len(dqs) == 2  # activation and weight
    assert {dq.meta.get("quantization_tag") for dq in dqs} == {"tag_linear"}
    chain = [n for n in gm.graph.nodes if n.target in QUANTIZE_OPS | CHOOSE_QPARAMS_OPS]
    expected = {"tag_linear"} if dynamic else {None}  # static: the graph input's q has no tagged producer
    assert {n.meta.get("quantization_tag") for n in chain} == expected


def test_port_node_meta_pass_restores_tags_convert_would_set():
    gm = _converted_tagged(dynamic=False)
    for n in gm.graph.nodes:
        if n.target in DEQUANTIZE_OPS:
            for k in USER_META_KEYS:
                n.meta.pop(k, None)
    assert PortNodeMetaForQDQ()(gm).modified
    linear = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    # the activation's dequantize (the weight's now reads a folded constant, not the edge's source)
    act_dq = next(a for a in linear.all_input_nodes if a.target == QD.dequantize_per_tensor.default)
    assert act_dq.meta["quantization_tag"] == "tag_linear"


def test_x86_marks_only_pattern_outputs():
    gm = export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()),
                torch.randn(1, 3, 8, 8))
    X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()).annotate(gm)
    flags = {n.name: get_annotation(n)._is_output_of_quantized_pattern
             for n in gm.graph.nodes if get_annotation(n) is not None}
    assert flags == {"conv2d": False, "relu": True}


def test_train_eval_error_is_also_not_implemented_and_keeps_our_message():
    x = torch.randn(2, 4)
    prepared = prepare_pt2e(export(torch.nn.Linear(4, 4), x),
                            X86InductorQuantizer().set_global(
                                get_default_x86_inductor_quantization_config()))
    for call in (prepared.train, prepared.eval):
        with pytest.raises(ExportedTrainEvalError, match="move_exported_model_to_eval") as info:
            call()
        assert isinstance(info.value, NotImplementedError)
        assert isinstance(info.value, PipelineStateError)


def test_move_to_eval_switches_inplace_dropout():
    gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5, inplace=True)),
                             (torch.ones(2, 8),)).module()
    targets = {n.target for n in gm.graph.nodes}
    if torch.ops.aten.dropout_.default not in targets:
        pytest.skip("this torch exports nn.Dropout(inplace=True) out of place")
    x = torch.ones(2, 8)
    gm = pt2e.move_exported_model_to_eval(gm)
    assert torch.equal(gm(x), gm(x))
    drop = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.dropout_.default)
    assert drop.args[2] is False
