"""Quantizers on the shared engine compose: a node one leaves float stays free for the next."""

from __future__ import annotations

import pytest
import torch

from pt2e.quantizer import ComposableQuantizer, Quantizer, get_annotation
from quantizers import (
    EmbeddingQuantizer,
    OpenVINOQuantizer,
    X86InductorQuantizer,
    XNNPACKQuantizer,
    XPUInductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_default_xpu_inductor_quantization_config,
    get_symmetric_quantization_config,
)


class EmbConvLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.lin = torch.nn.Linear(8, 4)
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lin(self.emb(idx)), self.conv(x)


ARGS = (torch.tensor([[1, 2, 3]]), torch.randn(1, 1, 6, 6))

BACKENDS = {
    "xnnpack": lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
    "x86": lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    "xpu": lambda: XPUInductorQuantizer().set_global(get_default_xpu_inductor_quantization_config()),
    "openvino": lambda: OpenVINOQuantizer(),
}

# each backend's way of leaving one module float with a None config
DECLINE_CONV = {
    "xnnpack": lambda: XNNPACKQuantizer().set_module_name("conv", None),
    "x86": lambda: X86InductorQuantizer().set_module_name_qconfig("conv", None),
    "xpu": lambda: XPUInductorQuantizer().set_module_name_qconfig("conv", None),
}


def _exported() -> torch.fx.GraphModule:
    return torch.export.export(EmbConvLinear().eval(), ARGS).module()


def _weight_edge_quantized(gm: torch.fx.GraphModule, target: object) -> bool:
    node = next(n for n in gm.graph.nodes if n.target == target)
    ann = get_annotation(node)
    qmap = getattr(ann, "input_qspec_map", None) or {}
    return any(a.op == "get_attr" and spec is not None for a, spec in qmap.items())


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_embedding_first_then_backend_quantizes_conv_and_linear(backend):
    gm = _exported()
    ComposableQuantizer([EmbeddingQuantizer(), BACKENDS[backend]()]).annotate(gm)
    aten = torch.ops.aten
    emb = get_annotation(next(n for n in gm.graph.nodes if n.target == aten.embedding.default))
    assert [s.dtype for s in emb.input_qspec_map.values()] == [torch.uint8]
    assert _weight_edge_quantized(gm, aten.conv2d.default)
    assert _weight_edge_quantized(gm, aten.linear.default)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_without_global_config_leaves_every_node_free(backend):
    gm = _exported()
    first: Quantizer = {
        "xnnpack": XNNPACKQuantizer, "x86": X86InductorQuantizer,
        "xpu": XPUInductorQuantizer, "openvino": lambda: OpenVINOQuantizer().set_global(None),
    }[backend]()
    first.annotate(gm)
    assert [n.name for n in gm.graph.nodes if get_annotation(n) is not None] == []


@pytest.mark.parametrize("backend", list(DECLINE_CONV))
def test_a_module_declined_with_none_is_taken_by_the_next_quantizer(backend):
    gm = _exported()
    first = DECLINE_CONV[backend]()
    second = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    ComposableQuantizer([first, second]).annotate(gm)
    assert _weight_edge_quantized(gm, torch.ops.aten.conv2d.default)
    # the first quantizer still reports what its None config kept float
    assert "excluded by a None quantization config" in str(first.report())


def test_openvino_ignored_scope_is_taken_by_the_next_quantizer():
    gm = _exported()
    first = OpenVINOQuantizer()
    first.set_ignored_scope(names=["conv2d"])
    second = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    ComposableQuantizer([first, second]).annotate(gm)
    assert _weight_edge_quantized(gm, torch.ops.aten.conv2d.default)  # by X86
    reasons = {r.node: r.reason for r in first.report().records}
    assert "ignored scope" in reasons["conv2d"]  # the first still reports what it left float


def test_a_none_config_still_beats_the_same_quantizers_global_config():
    gm = _exported()
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    q.set_module_name_qconfig("conv", None).annotate(gm)
    assert not _weight_edge_quantized(gm, torch.ops.aten.conv2d.default)
    assert _weight_edge_quantized(gm, torch.ops.aten.linear.default)
