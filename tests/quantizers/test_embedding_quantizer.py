"""EmbeddingQuantizer: per-row uint8 tables, alone and composed with X86 (vs torchao and closed form)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.quantizer import ComposableQuantizer, get_annotation
from quantizers import (
    EmbeddingQuantizer,
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)
from quantizers.embedding import get_embedding_operators_config

DQ_PER_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default


class EmbeddingLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(12, 8)
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(idx))


IDX = torch.tensor([[1, 2, 3, 11], [0, 5, 7, 7]])

# the same model and flow through torchao (a subprocess: importing its X86 quantizer patches Inductor)
TORCHAO_SCRIPT = r"""
import json, sys, torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import ComposableQuantizer
from torchao.quantization.pt2e.quantizer.embedding_quantizer import EmbeddingQuantizer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer, get_default_x86_inductor_quantization_config)
model = torch.load(sys.argv[1] + "/model.pt", weights_only=False)
idx = torch.load(sys.argv[1] + "/idx.pt")
x86 = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
p = prepare_pt2e(torch.export.export(model, (idx,)).module(), ComposableQuantizer([EmbeddingQuantizer(), x86]))
p(idx)
c = convert_pt2e(p)
torch.save(c(idx), sys.argv[1] + "/out.pt")
print(json.dumps([str(n.target) for n in c.graph.nodes if n.op == "call_function"]))
"""


def _composed_x86(model: torch.nn.Module) -> torch.fx.GraphModule:
    x86 = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    p = prepare_pt2e(torch.export.export(model, (IDX,)).module(), ComposableQuantizer([EmbeddingQuantizer(), x86]))
    p(IDX)
    return convert_pt2e(p)


@pytest.mark.slow
def test_composed_with_x86_matches_torchao(tmp_path):
    torch.manual_seed(0)
    model = EmbeddingLinear().eval()
    torch.save(model, tmp_path / "model.pt")
    torch.save(IDX, tmp_path / "idx.pt")
    run = subprocess.run([sys.executable, "-c", TORCHAO_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, check=True)
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    ours = _composed_x86(model)
    assert [str(n.target) for n in ours.graph.nodes if n.op == "call_function"] == theirs
    torch.testing.assert_close(ours(IDX), torch.load(tmp_path / "out.pt"), rtol=0, atol=1e-6)


def test_table_is_uint8_per_row_with_float_qparams():
    """Closed form: each row gets scale (max-min)/255 and a float zero point -min/scale."""
    torch.manual_seed(0)
    model = EmbeddingLinear().eval()
    converted = _composed_x86(model)
    emb = next(n for n in converted.graph.nodes if n.target == torch.ops.aten.embedding.default)
    dq = emb.args[0]
    assert dq.target == DQ_PER_CHANNEL
    table, scale, zero_point = (getattr(converted, a.target) for a in dq.args[:3])
    assert dq.args[3:] == (0, 0, 255, torch.uint8)
    w = model.emb.weight.detach()
    lo, hi = w.amin(dim=1), w.amax(dim=1)  # float qparams: the range need not include 0
    expected_scale = (hi - lo) / 255
    torch.testing.assert_close(scale, expected_scale)
    torch.testing.assert_close(zero_point, -lo / expected_scale)
    # quantize_per_channel adds the float zero point after rounding; the uint8 cast truncates
    s, zp = expected_scale[:, None], (-lo / expected_scale)[:, None]
    expected_table = torch.clamp(torch.round(w / s) + zp, 0, 255).to(torch.uint8)
    assert table.dtype == torch.uint8
    assert (table.int() - expected_table.int()).abs().max() <= 1  # float rounding at .5 / truncation edges
    dequantized = (table.float() - zero_point[:, None]) * scale[:, None]
    # rounding (+-0.5) then truncation ([0, 1)): the error lies in (-1.5, 0.5] scales
    err = (dequantized - w) / scale[:, None]
    assert err.min() > -1.5 - 1e-4 and err.max() <= 0.5 + 1e-4


def test_alone_quantizes_only_the_table_edge():
    gm = torch.export.export(EmbeddingLinear().eval(), (IDX,)).module()
    EmbeddingQuantizer().annotate(gm)
    annotated = {n.name: n for n in gm.graph.nodes if get_annotation(n) is not None}
    assert list(annotated) == ["embedding"]
    (edge, spec), = get_annotation(annotated["embedding"]).input_qspec_map.items()
    assert edge.target == "emb.weight" and spec.qscheme == torch.per_channel_affine_float_qparams


def test_report_lists_the_linear_it_leaves_to_the_next_quantizer():
    gm = torch.export.export(EmbeddingLinear().eval(), (IDX,)).module()
    report = EmbeddingQuantizer().report(gm)
    assert [r.node for r in report.records] == ["linear"]


def test_supported_operators_as_torchao():
    fresh = get_embedding_operators_config()
    (config,) = EmbeddingQuantizer.get_supported_quantization_configs()
    assert config.weight.qscheme == fresh.config.weight.qscheme == torch.per_channel_affine_float_qparams
    assert EmbeddingQuantizer.get_supported_operator_for_quantization_config(config) == fresh.operators
    assert EmbeddingQuantizer.get_supported_operator_for_quantization_config(
        get_default_x86_inductor_quantization_config()) == []
