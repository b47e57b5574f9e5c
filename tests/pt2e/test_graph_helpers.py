"""pt2e.graph: the provenance contract every pass keeps, and the helpers' names."""

from __future__ import annotations

import pytest
import torch
from support.models import MLP, ConvBN, SmallCNN, export
from support.reference_quantizer import ReferenceQuantizer
from torch.fx import Node

from pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from pt2e.errors import ArgumentValueError
from pt2e.graph import (
    CUSTOM_KEY,
    DEBUG_HANDLE_KEY,
    PROVENANCE_KEYS,
    batch_norm_args,
    conv_args,
    describe_node,
    fresh_attr_name,
    module_path,
    register_constant,
)
from pt2e.ops import is_dequantize, is_quantize

aten = torch.ops.aten


def _stamp(gm: torch.fx.GraphModule) -> dict[int, Node]:
    """Give every node a debug handle, as a numeric debugger would; handle -> node."""
    by_handle = {}
    for i, node in enumerate(gm.graph.nodes):
        node.meta.setdefault(CUSTOM_KEY, {})[DEBUG_HANDLE_KEY] = i
        by_handle[i] = node
    return by_handle


def _snapshot(by_handle: dict[int, Node]) -> dict[int, tuple[str, object]]:
    return {h: (n.name, n.meta.get("from_node")) for h, n in by_handle.items()}


def _handle(node: Node) -> int | None:
    return (node.meta.get(CUSTOM_KEY) or {}).get(DEBUG_HANDLE_KEY)


def _observed(node: Node) -> Node:
    """The node a quantize/dequantize chain stands for: the first non-q/dq producer."""
    while is_quantize(node) or is_dequantize(node):
        node = node.args[0]
    return node


def _check_provenance(converted: torch.fx.GraphModule, original: dict[int, tuple[str, object]],
                      *, qdq_follow_input: bool = True) -> None:
    original_names = {name for name, _ in original.values()}
    new_nodes = [n for n in converted.graph.nodes if n.name not in original_names]
    assert new_nodes, "the pipeline added no nodes"
    present = {n.name for n in converted.graph.nodes}
    for node in converted.graph.nodes:
        h = _handle(node)
        assert h is not None, f"{node.name} ({node.target}) lost or never got a debug handle"
        assert h in original, f"{node.name} carries an unknown handle {h}"
        name, from_node = original[h]
        if node.name in original_names:
            assert name == node.name, f"original node {node.name} carries {name}'s handle"
        assert node.meta.get("from_node") == from_node, (
            f"{node.name} carries {name}'s debug handle but not its from_node")
        if qdq_follow_input and (is_quantize(node) or is_dequantize(node)):
            # a q/dq stands for the value it quantizes; after QAT conv-bn folding that
            # value is the batch norm's output, now computed by the folded conv
            observed = _observed(node)
            assert h == _handle(observed) or name not in present, (
                f"{node.name} stands for {name}, not for {observed.name}, the value it quantizes")


X = torch.randn(4, 16)
IMG = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("fold_quantize", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("quantizer", [
    ReferenceQuantizer(),
    ReferenceQuantizer(per_channel=False),
    ReferenceQuantizer(derived_bias=True),
    ReferenceQuantizer(dynamic=True),
], ids=["per_channel", "per_tensor", "derived_bias", "dynamic"])
def test_ptq_nodes_carry_the_provenance_of_what_they_stand_for(quantizer, fold_quantize):
    gm = export(MLP(), X)
    original = _snapshot(_stamp(gm))
    prepared = prepare_pt2e(gm, quantizer)
    prepared(X)
    _check_provenance(convert_pt2e(prepared, fold_quantize=fold_quantize), original)


@pytest.mark.parametrize("quantizer", [ReferenceQuantizer(), ReferenceQuantizer(dynamic=True)],
                         ids=["static", "dynamic"])
def test_observers_carry_the_provenance_of_the_value_they_observe(quantizer):
    from pt2e.prepare import observer_nodes

    gm = export(MLP(), X)
    original = _snapshot(_stamp(gm))
    prepared = prepare_pt2e(gm, quantizer)
    observers = observer_nodes(prepared)
    assert observers
    for obs in observers:
        observed = obs.args[0]
        name, from_node = original[_handle(obs)]
        assert name == observed.name and obs.meta.get("from_node") == from_node, obs.name
        assert from_node, f"{observed.name} has no from_node to carry"


def test_control_flow_bodies_keep_provenance():
    class Cond(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))

    from pt2e.prepare import control_flow_bodies

    gm = torch.export.export(Cond().eval(), (X,)).module()
    originals = {name: _snapshot(_stamp(body)) for name, body in control_flow_bodies(gm)}
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    prepared(X)
    prepared(-X)
    converted = convert_pt2e(prepared)
    for name, body in control_flow_bodies(converted):
        assert any(is_quantize(n) for n in body.graph.nodes), name
        _check_provenance(body, originals[name])


def test_batch_norm_folding_keeps_provenance():
    model = SmallCNN()
    for bn in (model.features[1], model.features[5]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(1, 2)
    gm = export(model, IMG)
    original = _snapshot(_stamp(gm))
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    prepared(IMG)
    _check_provenance(convert_pt2e(prepared), original)


def test_reference_representation_nodes_carry_provenance():
    gm = export(MLP(), X)
    original = _snapshot(_stamp(gm))
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    prepared(X)
    converted = convert_pt2e(prepared, use_reference_representation=True)
    assert not any(is_quantize(n) or is_dequantize(n) for n in converted.graph.nodes)
    _check_provenance(converted, original, qdq_follow_input=False)


def test_qat_conv_bn_nodes_carry_provenance():
    gm = torch.export.export(ConvBN().train(), (IMG,)).module()
    original = _snapshot(_stamp(gm))
    prepared = prepare_qat_pt2e(gm, ReferenceQuantizer(is_qat=True))
    prepared(IMG).sum().backward()
    converted = convert_pt2e(move_exported_model_to_eval(prepared))
    assert not any(n.target in (aten.batch_norm.default,
                                aten._native_batch_norm_legit_no_training.default)
                   for n in converted.graph.nodes)
    _check_provenance(converted, original)


def test_no_two_nodes_share_a_custom_dict():
    """A debugger renumbering one node's handle in place must not renumber others."""
    gm = export(SmallCNN(), IMG)
    _stamp(gm)
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    prepared(IMG)
    converted = convert_pt2e(prepared, fold_quantize=False)
    dicts = [id(n.meta[CUSTOM_KEY]) for n in converted.graph.nodes]
    assert len(dicts) == len(set(dicts))


def test_observers_carry_provenance_after_prepare():
    gm = export(MLP(), X)
    original = _snapshot(_stamp(gm))
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    observers = [n for n in prepared.graph.nodes if n.op == "call_module"
                 and n.target.startswith("activation_post_process_")]
    assert observers
    for obs in observers:
        name, from_node = original[_handle(obs)]
        assert name == obs.args[0].name and obs.meta.get("from_node") == from_node


def test_provenance_keys_are_the_documented_four():
    assert PROVENANCE_KEYS == ("nn_module_stack", "stack_trace", "from_node", "custom")
    assert (CUSTOM_KEY, DEBUG_HANDLE_KEY) == ("custom", "numeric_debug_handle")


@pytest.mark.parametrize(("stem", "numbered", "taken", "expected"), [
    ("w", False, [], "w"),
    ("w", False, ["w", "w_1"], "w_2"),
    ("layer.0.weight_bn_folded", False, [], "layer_0_weight_bn_folded"),
    ("_frozen_param", True, [], "_frozen_param0"),
    ("_frozen_param", True, ["_frozen_param0", "_frozen_param1"], "_frozen_param2"),
    ("activation_post_process_", True, ["activation_post_process_0"], "activation_post_process_1"),
], ids=["free", "suffixed", "dotted", "numbered", "numbered_taken", "observer"])
def test_fresh_attr_name(stem, numbered, taken, expected):
    m = torch.nn.Module()
    for t in taken:
        m.register_buffer(t, torch.zeros(1))
    assert fresh_attr_name(m, stem, numbered=numbered) == expected


def test_pipeline_attribute_names_are_unchanged():
    gm = export(MLP(), X)
    prepared = prepare_pt2e(gm, ReferenceQuantizer())
    names = {n.target for n in prepared.graph.nodes if n.op == "call_module"}
    assert {"activation_post_process_0", "activation_post_process_1"} <= names
    prepared(X)
    converted = convert_pt2e(prepared)
    attrs = {n.target for n in converted.graph.nodes if n.op == "get_attr"}
    assert {"_frozen_param0", "_frozen_param1"} <= attrs
    assert any(a.endswith("_scale") and a.startswith("activation_post_process_") for a in attrs)


def test_register_constant_parameter_is_frozen():
    m = torch.nn.Module()
    name = register_constant(m, "a.b", torch.ones(2), parameter=True)
    assert name == "a_b"
    assert isinstance(m.a_b, torch.nn.Parameter) and not m.a_b.requires_grad


def test_describe_node_uses_dotted_module_paths():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

        def forward(self, x):
            return self.layers[0](x)

    gm = export(Net(), torch.randn(1, 2))
    lin = next(n for n in gm.graph.nodes if n.target == aten.linear.default)
    assert module_path(lin) == "layers.0"
    assert describe_node(lin) == "node 'linear' (call_function aten.linear.default, module 'layers.0')"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batch_norm_args_decodes_both_ops(training):
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2, eps=1e-3))
    gm = torch.export.export(m.train(training), (torch.randn(2, 1, 2, 2),)).module()
    bn = next(n for n in gm.graph.nodes if "batch_norm" in str(n.target))
    args = batch_norm_args(bn)
    assert args.input.name == "conv2d"
    assert args.training is training
    assert args.eps == pytest.approx(1e-3) and args.momentum == pytest.approx(0.1)
    assert args.running_mean.op == args.running_var.op == "get_attr"


@pytest.mark.parametrize(("module", "x", "expected"), [
    (torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2, bias=False),
     torch.randn(1, 4, 9, 9), ([2, 2], [1, 1], [2, 2], 2, 0, False)),
    (torch.nn.Conv1d(4, 4, 3, padding="same", groups=4), torch.randn(1, 4, 9), ([1], "same", [1], 4, 0, False)),
    (torch.nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1, groups=2, dilation=1),
     torch.randn(1, 4, 5, 5), ([2, 2], [0, 0], 1, 2, [1, 1], True)),  # dilation left out: default
    (torch.nn.Conv3d(2, 2, 1), torch.randn(1, 2, 3, 3, 3), (1, 0, 1, 1, 0, False)),  # all defaults: left out
], ids=["conv2d", "conv1d-same", "conv-transpose2d", "conv3d"])
def test_conv_args_decodes_convs(module, x, expected):
    gm = torch.export.export(module, (x,)).module()
    conv = next(n for n in gm.graph.nodes if n.op == "call_function")
    a = conv_args(conv)
    assert (a.stride, a.padding, a.dilation, a.groups, a.output_padding, a.transposed) == expected
    assert (a.bias is None) == (module.bias is None)


def test_conv_args_reads_keywords_and_fills_defaults():
    graph = torch.fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    short = graph.call_function(aten.conv2d.default, (x, w))
    keyword = graph.call_function(aten.conv2d.default, (x, w), {"groups": 3, "stride": [2, 2]})
    assert conv_args(short) == (None, 1, 0, 1, 1, 0, False)
    assert (conv_args(keyword).groups, conv_args(keyword).stride) == (3, [2, 2])


def test_conv_args_rejects_other_nodes():
    gm = export(MLP(), X)
    lin = next(n for n in gm.graph.nodes if n.op == "call_function")
    with pytest.raises(ArgumentValueError, match="not a convolution"):
        conv_args(lin)


def test_batch_norm_args_rejects_other_nodes():
    gm = export(MLP(), X)
    lin = next(n for n in gm.graph.nodes if n.op == "call_function")
    with pytest.raises(ArgumentValueError, match="not a batch norm"):
        batch_norm_args(lin)
