"""X86InductorQuantizer: annotation structure and exact quantize/dequantize counts per pattern."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import support.x86_models as M
import torch
from torch import nn

from pt2e.errors import QuantizationConfigError
from pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from pt2e.quantizer import get_annotation, is_annotated
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

aten = torch.ops.aten
CFG = get_default_x86_inductor_quantization_config()
DYN = get_default_x86_inductor_quantization_config(is_dynamic=True)


def export(model: nn.Module, args):
    return torch.export.export(model.eval(), args).module()


def quantize(model: nn.Module, args, quantizer: X86InductorQuantizer):
    prepared = prepare_pt2e(export(model, args), quantizer)
    prepared(*args)
    return convert_pt2e(prepared)


def qdq_counts(gm) -> dict[str, int]:
    """``{"q": per-tensor quantize, "dq": per-tensor dequantize, "dq_ch": per-channel dequantize, ...}``."""
    names = {"quantize_per_tensor": "q", "dequantize_per_tensor": "dq",
             "dequantize_per_channel": "dq_ch", "choose_qparams": "choose"}
    c = Counter(names.get(n.target.__name__.split(".")[0], n.target.__name__)
                for n in gm.graph.nodes
                if n.op == "call_function" and "quantized_decomposed" in str(n.target))
    return dict(c)


def nodes(gm, target):
    return [n for n in gm.graph.nodes if n.target == target]


def global_quantizer(config=CFG) -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(config)


# --- exact counts per pattern (converted graph) -------------------------------------------------

COUNT_CASES = [
    # conv input + per-channel weight; bn folded; relu output stays float (no int8 consumer)
    pytest.param("ConvBnRelu", {"q": 1, "dq": 1, "dq_ch": 1}, id="conv_bn_relu"),
    # conv input and the add's other operand are quantized (oneDNN sums in int8)
    pytest.param("ConvAddRelu", {"q": 2, "dq": 2, "dq_ch": 1}, id="conv_add_relu"),
    pytest.param("LinearRelu", {"q": 1, "dq": 1, "dq_ch": 1}, id="linear_relu"),
    # linear + add: the residual operand stays float (accuracy), as in torchao
    pytest.param("LinearAdd", {"q": 1, "dq": 1, "dq_ch": 1}, id="linear_add"),
    # x; relu out (pool input); pool out (shared qparams) feeding c2
    pytest.param("ConvPoolConv", {"q": 3, "dq": 3, "dq_ch": 2}, id="maxpool_shared"),
    # x (shared by both convs); each relu -> cat edge; cat out
    pytest.param("ConvCat", {"q": 4, "dq": 5, "dq_ch": 3}, id="cat_shared"),
    # x, relu1 (c2 input and residual: one q, two dq), relu2 (pool in), pool out, flatten out
    pytest.param("SmallCNN", {"q": 5, "dq": 6, "dq_ch": 3}, id="small_cnn"),
]


@pytest.mark.parametrize("name, expected", COUNT_CASES)
def test_qdq_counts_per_pattern(name, expected):
    model, args = getattr(M, name)(), M.example_inputs(name)
    assert qdq_counts(quantize(model, args, global_quantizer())) == expected


def test_conv_bn_relu_annotation_claims_the_whole_pattern():
    gm = export(M.ConvBnRelu(), M.example_inputs("ConvBnRelu"))
    global_quantizer().annotate(gm)
    (conv,) = nodes(gm, aten.conv2d.default)
    (bn,) = nodes(gm, aten.batch_norm.default)
    (relu,) = nodes(gm, aten.relu.default)
    assert [a.name for a in get_annotation(conv).input_qspec_map] == ["x", "conv_weight"]
    assert get_annotation(conv).output_qspec is None
    assert is_annotated(bn) and is_annotated(relu)
    assert not get_annotation(relu).input_qspec_map


def test_linear_add_leaves_residual_float():
    gm = export(M.LinearAdd(), M.example_inputs("LinearAdd"))
    global_quantizer().annotate(gm)
    (add,) = nodes(gm, aten.add.Tensor)
    assert is_annotated(add) and not get_annotation(add).input_qspec_map


def _qparams_around(gm, target):
    """(scale, zp) of the dequantize feeding ``target`` and of the quantize after it."""
    (op,) = nodes(gm, target)
    dq_in = op.args[0] if target != aten.cat.default else op.args[0][0]
    (q_out,) = [u for u in op.users if u.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
    return dq_in.args[1:3], q_out.args[1:3]


@pytest.mark.parametrize("name, target", [
    pytest.param("ConvPoolConv", aten.max_pool2d.default, id="maxpool"),
    pytest.param("ConvCat", aten.cat.default, id="cat"),
])
def test_int8_passthrough_ops_share_input_qparams(name, target):
    gm = quantize(getattr(M, name)(), M.example_inputs(name), global_quantizer())
    qin, qout = _qparams_around(gm, target)
    assert qin == qout


# --- attention -----------------------------------------------------------------------------------

def test_attention_matmuls_are_opt_in_like_torchao():
    args = M.example_inputs("Attention")
    plain = quantize(M.Attention(), args, global_quantizer())
    with_mm = quantize(M.Attention(), args, global_quantizer().set_function_type_qconfig(torch.matmul, CFG))
    # 4 projections; matmuls add q/dq on their 4 inputs (q(x) feeds 3 projections: one q)
    assert qdq_counts(plain) == {"q": 2, "dq": 4, "dq_ch": 4}
    assert qdq_counts(with_mm) == {"q": 6, "dq": 8, "dq_ch": 4}


def _linear_weights_quantized(gm) -> list[bool]:
    out = []
    for n in nodes(gm, aten.linear.default):
        qmap = get_annotation(n).input_qspec_map if get_annotation(n) else {}
        out.append(n.args[1] in qmap)
    return out


@pytest.mark.parametrize("make, args", [
    pytest.param(lambda: nn.MultiheadAttention(16, 2, batch_first=True), (torch.randn(2, 8, 16),) * 3, id="mha"),
    pytest.param(lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True),
                 (torch.randn(2, 8, 16),), id="transformer_encoder_layer"),
])
def test_attention_projections_are_quantized(make, args):
    gm = export(make(), args)
    q = global_quantizer()
    q.annotate(gm)
    flags = _linear_weights_quantized(gm)
    assert flags and all(flags)
    assert not [op for op in q.unquantized_ops if "linear" in op.op]


def test_mha_bmm_quantized_with_matmul_config():
    x = torch.randn(2, 8, 16)
    gm = export(nn.MultiheadAttention(16, 2, batch_first=True), (x, x, x))
    q = global_quantizer().set_function_type_qconfig(torch.bmm, CFG)
    q.annotate(gm)
    bmms = nodes(gm, aten.bmm.default)
    assert len(bmms) == 2 and all(len(get_annotation(b).input_qspec_map) == 2 for b in bmms)


# --- what torchao gets wrong ---------------------------------------------------------------------

def test_module_instance_used_twice_annotates_under_non_strict_export():
    args = M.example_inputs("ResBlocks")
    gm = quantize(M.ResBlocks(), args, global_quantizer())
    # c1, c2 and both calls of the shared fc are quantized
    assert qdq_counts(gm)["dq_ch"] == 4


def test_unused_pooler_does_not_crash():
    args = M.example_inputs("WithPooler")
    gm = quantize(M.WithPooler(), args, global_quantizer())
    assert gm(*args).shape == (2, 8, 4)


# --- configuration ---------------------------------------------------------------------------------

def test_module_name_config_beats_module_type_and_global():
    args = M.example_inputs("WithPooler")
    q = (global_quantizer().set_module_type_qconfig(nn.Linear, None)
         .set_module_name_qconfig("head", CFG))
    gm = export(M.WithPooler(), args)
    q.annotate(gm)
    quantized = {n.meta["nn_module_stack"].popitem()[1][0]: ok
                 for n, ok in zip(nodes(gm, aten.linear.default), _linear_weights_quantized(gm))}
    assert quantized == {"enc": False, "pooler": False, "head": True}


def test_module_name_none_keeps_submodule_float():
    args = M.example_inputs("MLP")
    gm = quantize(M.MLP(), args, global_quantizer().set_module_name_qconfig("fc2", None))
    assert qdq_counts(gm)["dq_ch"] == 2


def test_dynamic_config_quantizes_linear_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8))
    args = (torch.randn(2, 3, 8, 8),)
    q = global_quantizer(DYN)
    gm = quantize(model, args, q)
    counts = qdq_counts(gm)
    assert counts["dq_ch"] == 1 and counts["choose"] == 1
    assert [op.op for op in q.unquantized_ops] == ["aten.conv2d.default"]
    assert "linear only" in str(q.report())


def test_report_lists_float_compute_ops():
    x = torch.randn(2, 8, 16)
    q = global_quantizer()
    text = str(q.report(export(nn.MultiheadAttention(16, 2, batch_first=True), (x, x, x))))
    assert "2 compute op(s) stay float" in text and "opt-in" in text


def test_mixing_static_and_dynamic_configs_raises():
    with pytest.raises(QuantizationConfigError, match="is_dynamic"):
        global_quantizer().set_module_name_qconfig("fc", DYN)


def test_unknown_module_type_raises():
    with pytest.raises(QuantizationConfigError, match="no pattern for this type"):
        global_quantizer().set_module_type_qconfig(nn.LSTM, CFG)


def test_import_changes_no_inductor_config():
    code = (
        "import torch._inductor.config as c, torch._inductor.fx_passes.freezing_patterns as f\n"
        "before = (c.save_config_portable(), f.pass_patterns[0].patterns.copy() if f.pass_patterns else None)\n"
        "import quantizers, lowering\n"
        "after = (c.save_config_portable(), f.pass_patterns[0].patterns.copy() if f.pass_patterns else None)\n"
        "assert before == after, 'import changed inductor state'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_root()))


def _root():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[2]
