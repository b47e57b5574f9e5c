"""XPUInductorQuantizer: exact q/dq counts, the same graphs and config as torchao's, CPU lowering.

No XPU here: the annotation is compared with torchao's XPUInductorQuantizer (in a
subprocess: importing torchao's inductor quantizers patches Inductor) and the
converted graphs are lowered on the x86 CPU path.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import subprocess
import sys
from collections import Counter

import pytest
import support.x86_models as M
import torch
from support.numerics import sqnr

from pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from pt2e.quantizer import is_annotated
from quantizers import (
    X86InductorQuantizer,
    XPUInductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_default_xpu_inductor_quantization_config,
    x86_needs_reduce_range,
)
from quantizers.x86_inductor import X86_PATTERNS
from quantizers.xpu_inductor import XPU_PATTERNS

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = get_default_xpu_inductor_quantization_config()
QAT_CFG = get_default_x86_inductor_quantization_config(is_qat=True)
MIN_SQNR_DB = 25.0


def quantize(name: str, quantizer, *, qat: bool = False):
    model, args = getattr(M, name)(), M.example_inputs(name)
    model = model.train() if qat else model.eval()
    prepare = prepare_qat_pt2e if qat else prepare_pt2e
    prepared = prepare(torch.export.export(model, args).module(), quantizer)
    prepared(*args)
    return model.eval(), convert_pt2e(prepared), args


def qdq_counts(gm) -> dict[str, int]:
    """``{"quantize_per_tensor.default": 3, ...}`` for the quantized_decomposed ops of ``gm``."""
    return dict(Counter(n.target.__name__ for n in gm.graph.nodes
                        if n.op == "call_function" and "quantized_decomposed" in str(n.target)))


def describe_config(cfg) -> dict:
    """The fields of a quantization config that decide the graph, as JSON values."""
    def spec(s):
        if s is None:
            return None
        obs = s.observer_or_fake_quant_ctr()
        return {"dtype": str(s.dtype), "range": [s.quant_min, s.quant_max], "qscheme": str(s.qscheme),
                "ch_axis": s.ch_axis, "is_dynamic": s.is_dynamic,
                "observer": type(obs).__name__, "eps": float(obs.eps)}

    return {"act_in": spec(cfg.input_activation), "act_out": spec(cfg.output_activation),
            "weight": spec(cfg.weight), "bias": spec(cfg.bias), "is_qat": cfg.is_qat}


# --- exact counts (fast) ------------------------------------------------------------------------

Q, DQ, DQ_CH = "quantize_per_tensor.default", "dequantize_per_tensor.default", "dequantize_per_channel.default"


@pytest.mark.parametrize("name, expected", [
    # x; relu1 (c2 input and the residual: one q, two dq); flatten -> fc input. The
    # maxpool stays float, so relu2 and the flatten are not kept in int8 (x86: q 5, dq 6)
    pytest.param("SmallCNN", {Q: 3, DQ: 4, DQ_CH: 3}, id="small_cnn"),
    # x; the float maxpool's output into c2 (x86: q 3, dq 3)
    pytest.param("ConvPoolConv", {Q: 2, DQ: 2, DQ_CH: 2}, id="maxpool_float"),
    pytest.param("MLP", {Q: 3, DQ: 3, DQ_CH: 3}, id="mlp"),
])
def test_qdq_counts(name, expected):
    assert qdq_counts(quantize(name, XPUInductorQuantizer().set_global(CFG))[1]) == expected


def test_activations_are_signed_int8():
    _, converted, _ = quantize("ConvPoolConv", XPUInductorQuantizer().set_global(CFG))
    qs = [n for n in converted.graph.nodes if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
    assert [q.args[3:] for q in qs] == [(-128, 127, torch.int8)] * 2


def test_maxpool_is_left_unannotated():
    model, args = M.ConvPoolConv().eval(), M.example_inputs("ConvPoolConv")
    gm = torch.export.export(model, args).module()
    XPUInductorQuantizer().set_global(CFG).annotate(gm)
    (pool,) = [n for n in gm.graph.nodes if n.target == torch.ops.aten.max_pool2d.default]
    assert not is_annotated(pool)


def test_qat_conv_bn_is_not_fused():
    # conv input + weight only; x86 also observes the batch norm output (q 2, dq 2)
    _, converted, _ = quantize("ConvBnRelu", XPUInductorQuantizer().set_global(QAT_CFG), qat=True)
    assert qdq_counts(converted) == {Q: 1, DQ: 1, DQ_CH: 1}


def test_pattern_table_is_x86_without_maxpool_and_bn_steps():
    assert [p.name for p in XPU_PATTERNS] == [p.name for p in X86_PATTERNS]
    for xpu, x86 in zip(XPU_PATTERNS, X86_PATTERNS):
        assert (xpu.annotator, xpu.priority, xpu.default, xpu.dynamic) == \
            (x86.annotator, x86.priority, x86.default, x86.dynamic)
        assert x86.anchor - xpu.anchor <= {torch.ops.aten.max_pool2d.default}
        assert [s.role for s in xpu.chain] == [s.role for s in x86.chain if s.role != "bn"]


def test_default_config_is_x86_recipe_with_int8_activations():
    x86 = describe_config(get_default_x86_inductor_quantization_config())
    x86["act_in"]["dtype"] = x86["act_out"]["dtype"] = "torch.int8"
    x86["act_in"]["range"] = x86["act_out"]["range"] = [-128, 127]
    assert describe_config(CFG) == x86


def test_is_a_torchao_style_x86_quantizer():
    # torchao's XPUInductorQuantizer subclasses its X86InductorQuantizer; isinstance checks keep working
    assert isinstance(XPUInductorQuantizer(), X86InductorQuantizer)


def test_config_signature_matches_torchao():
    # torchao's takes no arguments (no QAT / dynamic / reduce_range variants for XPU)
    assert not inspect.signature(get_default_xpu_inductor_quantization_config).parameters


# --- same as torchao (slow: a subprocess imports torchao) ---------------------------------------

PTQ_MODELS = ["SmallCNN", "ConvPoolConv", "MLP"]
QAT_MODELS = ["ConvBnRelu", "SmallCNN"]
TORCHAO_SCRIPT = inspect.getsource(describe_config) + r"""
import json, sys, torch
from collections import Counter
sys.path.insert(0, sys.argv[1])
import support.x86_models as M
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config
from torchao.quantization.pt2e.quantizer.xpu_inductor_quantizer import (
    XPUInductorQuantizer, get_default_xpu_inductor_quantization_config)
out = {"config": describe_config(get_default_xpu_inductor_quantization_config())}
for qat, names, cfg in ((False, sys.argv[2].split(","), get_default_xpu_inductor_quantization_config()),
                        (True, sys.argv[3].split(","), get_default_x86_inductor_quantization_config(is_qat=True))):
    for name in names:
        torch.manual_seed(0)
        model, args = getattr(M, name)(), M.example_inputs(name)
        model = model.train() if qat else model.eval()
        prepare = prepare_qat_pt2e if qat else prepare_pt2e
        p = prepare(torch.export.export(model, args).module(), XPUInductorQuantizer().set_global(cfg))
        p(*args)
        c = convert_pt2e(p)
        out[f"{'qat' if qat else 'ptq'}-{name}"] = dict(Counter(
            n.target.__name__ for n in c.graph.nodes
            if n.op == "call_function" and "quantized_decomposed" in str(n.target)))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def torchao_results():
    pytest.importorskip("torchao")
    proc = subprocess.run(
        [sys.executable, "-c", TORCHAO_SCRIPT, str(ROOT / "tests"), ",".join(PTQ_MODELS), ",".join(QAT_MODELS)],
        capture_output=True, text=True, cwd=str(ROOT), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_default_config_matches_torchao(torchao_results):
    assert describe_config(CFG) == torchao_results["config"]


@pytest.mark.slow
@pytest.mark.parametrize("mode, name", [("ptq", n) for n in PTQ_MODELS] + [("qat", n) for n in QAT_MODELS],
                         ids=lambda v: v)
def test_same_qdq_counts_as_torchao(mode, name, torchao_results):
    config = QAT_CFG if mode == "qat" else CFG
    _, converted, _ = quantize(name, XPUInductorQuantizer().set_global(config), qat=mode == "qat")
    assert qdq_counts(converted) == torchao_results[f"{mode}-{name}"]


# --- lowering on the CPU path (slow: torch.compile) ---------------------------------------------


@pytest.mark.slow
def test_default_config_graph_runs_onednn_qlinear_on_cpu():
    # oneDNN's CPU qlinear takes int8 activations; its CPU qconv does not (uint8 only)
    from lowering import compile_x86

    model, converted, args = quantize("MLP", XPUInductorQuantizer().set_global(CFG))
    compiled = compile_x86(converted, args)
    assert compiled.kernels is not None
    assert "onednn.qlinear_pointwise" in compiled.kernels.int8, str(compiled.kernels)
    with torch.no_grad():
        assert sqnr(model(*args), compiled(*args)) >= MIN_SQNR_DB


@pytest.mark.slow
def test_xpu_patterns_lower_to_onednn_qconv_and_qlinear_on_cpu():
    # uint8 activations so the CPU qconv accepts them; the max pool stays a float kernel
    from lowering import compile_x86

    config = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())
    model, converted, args = quantize("SmallCNN", XPUInductorQuantizer().set_global(config))
    compiled = compile_x86(converted, args)
    assert compiled.kernels is not None
    assert {"onednn.qconv_pointwise", "onednn.qlinear_pointwise"} <= set(compiled.kernels.int8), str(compiled.kernels)
    assert "max_pool2d (int8 loop)" not in compiled.kernels.int8
    with torch.no_grad():
        assert sqnr(model(*args), compiled(*args)) >= MIN_SQNR_DB
