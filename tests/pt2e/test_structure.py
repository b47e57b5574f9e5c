"""Graph structure after prepare/convert: exact q/dq counts and order."""

from __future__ import annotations

import pytest
import torch
from support.models import ConvBN, export
from support.numerics import count_targets, op_sequence
from support.reference_quantizer import ReferenceQuantizer
from torch import nn

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.prepare import observer_nodes

Q = "quantize_per_tensor.default"
DQ = "dequantize_per_tensor.default"
DQC = "dequantize_per_channel.default"
QC = "quantize_per_channel.default"


def run(model, example, quantizer=None, calibrate=True, **convert_kwargs):
    """Prepare, calibrate and convert; returns (observer instances in prepared, converted)."""
    gm = export(model, *example)
    prepared = prepare_pt2e(gm, quantizer or ReferenceQuantizer())
    if calibrate:
        prepared(*example)
    modules = dict(prepared.named_modules(remove_duplicate=False))
    observers = [modules[n.target] for n in observer_nodes(prepared)]
    return observers, convert_pt2e(prepared, **convert_kwargs)


def test_linear_static_per_channel_sequence():
    observers, converted = run(nn.Linear(8, 4), (torch.randn(2, 8),))
    # input obs, weight obs, output obs
    assert len(observers) == 3
    # the weight's get_attr comes first in an exported graph, so its dequantize does too
    assert op_sequence(converted) == [DQC, Q, DQ, "linear.default", Q, DQ]
    weight_attr = converted.graph.find_nodes(op="get_attr")
    int_weights = [getattr(converted, n.target) for n in weight_attr
                   if getattr(converted, n.target).dtype == torch.int8]
    assert len(int_weights) == 1 and int_weights[0].shape == (4, 8)


def test_fold_quantize_off_keeps_float_weight_quantize():
    _, converted = run(nn.Linear(8, 4), (torch.randn(2, 8),), fold_quantize=False)
    assert op_sequence(converted) == [QC, DQC, Q, DQ, "linear.default", Q, DQ]
    q_node = next(n for n in converted.graph.nodes if n.target.__class__ is not str
                  and getattr(n.target, "__name__", "") == QC)
    assert getattr(converted, q_node.args[0].target).dtype == torch.float32


def test_per_tensor_weights():
    _, converted = run(nn.Linear(8, 4), (torch.randn(2, 8),),
                       ReferenceQuantizer(per_channel=False))
    assert op_sequence(converted) == [DQ, Q, DQ, "linear.default", Q, DQ]


def test_conv_bn_relu_folds_batch_norm():
    model = ConvBN()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    _, converted = run(model, (torch.randn(1, 3, 8, 8),))
    seq = op_sequence(converted)
    assert "batch_norm.default" not in seq
    # relu shares the conv output's observer group only through implicit sharing of its input
    assert seq == [Q, DQ, DQC, "conv2d.default", Q, DQ, "relu.default", Q, DQ]


class CatPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return torch.nn.functional.max_pool2d(y, 2)


def test_cat_and_maxpool_share_one_observer():
    observers, converted = run(CatPool(), (torch.randn(1, 3, 8, 8),))
    # x (shared by both convs), two weights, and ONE group for conv a/b outputs, cat, maxpool
    assert len({id(o) for o in observers}) == 4
    qs = [n for n in converted.graph.nodes if getattr(n.target, "__name__", "") == Q]
    scales = {n.args[1] for n in qs}
    assert len(scales) == 2  # the input's scale and the shared one


def test_derived_bias_scale_is_product():
    _, converted = run(nn.Linear(8, 4), (torch.randn(2, 8),),
                              ReferenceQuantizer(derived_bias=True, per_channel=False))
    seq = op_sequence(converted)
    assert seq.count(DQ) == 4  # input, weight, bias (int32), output
    nodes = {n.name: n for n in converted.graph.nodes}
    lin = next(n for n in nodes.values() if getattr(n.target, "__name__", "") == "linear.default")
    x_dq, w_dq, b_dq = lin.args
    assert b_dq.args[-1] == torch.int32
    assert b_dq.args[1] == pytest.approx(x_dq.args[1] * w_dq.args[1], rel=1e-6)


class Sig(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


def test_fixed_qparams_for_sigmoid_output():
    _, converted = run(Sig(), (torch.randn(4, 4),))
    qs = [n for n in converted.graph.nodes if getattr(n.target, "__name__", "") == Q]
    assert [(n.args[1], n.args[2]) for n in qs][-1] == (1.0 / 256.0, 0)


def test_dynamic_linear_chain():
    _, converted = run(nn.Linear(8, 4), (torch.randn(2, 8),), ReferenceQuantizer(dynamic=True),
                       calibrate=False)
    assert op_sequence(converted) == [
        DQC, "choose_qparams.tensor", "getitem", "getitem", "quantize_per_tensor.tensor",
        "dequantize_per_tensor.tensor", "linear.default"]


class TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) + self.c(y)


def test_multi_user_gets_one_observer_and_a_dequantize_per_consumer():
    _, converted = run(TwoUsers(), (torch.randn(2, 8),))
    counts = count_targets(converted)
    # quantize: x, a-out, b-out, c-out, add-out; dequantize: one per consumer
    # (x->a, y->b, y->c, b->add, c->add, add->output)
    assert counts[Q] == 5
    assert counts[DQ] == 6
    y_q = next(n for n in converted.graph.nodes
               if getattr(n.target, "__name__", "") == Q and n.args[0].name == "linear")
    assert len(y_q.users) == 2 and all(len(d.users) == 1 for d in y_q.users)


class Buffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("count", torch.zeros(4))

    def forward(self, x):
        y = self.fc(x)
        self.count.add_(y.sum(0))
        return torch.relu(y)


def test_mutable_buffer_still_mutated_after_convert():
    x = torch.randn(2, 4)
    _, converted = run(Buffer(), (x,))
    assert any(getattr(n.target, "__name__", "") == "add_.Tensor" for n in converted.graph.nodes)
    before = converted.count.clone()
    converted(x)
    assert not torch.equal(converted.count, before)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        y.relu_()
        return y * 2


def test_in_place_op_survives():
    x = torch.randn(3, 4)
    model = InPlace().eval()
    _, converted = run(model, (x,))
    assert torch.allclose(converted(x), model(x), atol=0.1)


def test_unannotated_op_stays_float():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    _, converted = run(M(), (torch.randn(2, 4),))
    tanh = next(n for n in converted.graph.nodes if getattr(n.target, "__name__", "") == "tanh.default")
    assert getattr(tanh.args[0].target, "__name__", "") == DQ
    assert all(getattr(u.target, "__name__", "") != Q for u in tanh.users)


def test_metadata_preserved_on_new_nodes():
    _, converted = run(nn.Sequential(nn.Linear(4, 4)), (torch.randn(2, 4),))
    qdq = [n for n in converted.graph.nodes if getattr(n.target, "__name__", "") in (Q, DQ, DQC)]
    assert len(qdq) == 5
    # every q/dq but the model input's quantize belongs to the linear layer
    for n in (n for n in qdq if n.args[0].op != "placeholder"):
        assert n.meta["nn_module_stack"], n.name
        assert "stack_trace" in n.meta, n.name


class BertLike(nn.Module):
    """An encoder whose pooler output is computed but never returned."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(16, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.pooler = nn.Linear(32, 32)

    def forward(self, x):
        hidden = self.layer(self.emb(x))
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # noqa: F841 (export keeps it, dead in the graph)
        return hidden


def test_unused_pooler_is_dropped_before_annotation():
    x = torch.randn(2, 5, 16)
    _, converted = run(BertLike(), (x,))
    assert not any("pooler" in str(n.meta.get("nn_module_stack", "")) and n.op == "call_function"
                   for n in converted.graph.nodes)
    assert not hasattr(converted.get_submodule("pooler"), "weight")
