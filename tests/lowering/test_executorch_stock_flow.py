"""ExecuTorch's own lowering API on our converted graphs (no help from lowering.to_executorch),
and what our to_executorch delegates on a MobileNetV3-style graph.
"""

from __future__ import annotations

import pytest
import torch
from support.numerics import sqnr
from torch import nn

from lowering import to_executorch
from lowering.executorch_checks import SharedOutputPass
from lowering.executorch_runtime import ExecuTorchRunner
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

pytest.importorskip("executorch.runtime")

MIN_SQNR_DB = 30.0


class Tied(nn.Module):
    """One nn.Linear applied twice: one bias constant read by two layers of different input scales."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 16)
        with torch.no_grad():
            self.fc.bias.mul_(3)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.fc(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cexp: int, cout: int, se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, 3, padding=1, groups=cexp, bias=False),
                                nn.BatchNorm2d(cexp), nn.Hardswish())
        self.se = SqueezeExcite(cexp) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3Style(nn.Module):
    """Hardswish stem, three inverted-residual blocks (two with squeeze-excite), a hardswish head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(16, 32, 16, True), InvertedResidual(16, 48, 24, False),
                                    InvertedResidual(24, 64, 24, True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 64), nn.Hardswish(),
                                  nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _converted(model: nn.Module, shape: tuple[int, ...], dynamic_shapes: object = None) -> torch.fx.GraphModule:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    exported = torch.export.export(model, (torch.randn(*shape),), dynamic_shapes=dynamic_shapes)
    prepared = prepare_pt2e(exported.module(), quantizer)
    for _ in range(8):
        prepared(torch.randn(*shape))
    return convert_pt2e(prepared)


@pytest.mark.slow
def test_stock_executorch_flow_keeps_a_twice_applied_linear_accurate():
    """``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` on the converted
    graph: before convert untied the shared bias, XNNPACK quantized it with the first layer's
    scale in both layers (5.9 dB against float)."""
    import executorch.kernels.quantized  # noqa: F401  (the portable quantize/dequantize kernels)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = Tied().eval()
    converted = _converted(model, (8, 32))
    x = torch.randn(8, 32)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (x,)),
                                       partitioner=[XnnpackPartitioner()])
    runner = ExecuTorchRunner(bytes(edge.to_executorch().buffer))
    out = runner(x)
    assert sqnr(model(x), out) >= MIN_SQNR_DB
    assert sqnr(converted(x), out) >= MIN_SQNR_DB


@pytest.mark.slow
def test_mobilenet_v3_style_graph_is_delegated_whole():
    """Hardsigmoid (squeeze-excite) and ``x / 6`` used to leave an int64->float cast of their
    constant outside the delegate ("invalid dtype"), one per Python-number operand."""
    model = MobileNetV3Style().eval()
    converted = _converted(model, (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    program = to_executorch(converted, (x,))
    report = program.report
    assert report.num_delegates == 1, report.summary()
    assert report.outside == (), report.summary()
    assert report.count("convolution", precision="int8") == 14, report.summary()
    assert report.count("linear", precision="int8") == 2, report.summary()
    assert sqnr(model(x), program(x)) >= MIN_SQNR_DB


class Conv1dTwice(nn.Module):
    """One nn.Conv1d applied twice: one weight constant read by two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


@pytest.mark.slow
def test_stock_executorch_flow_lowers_a_twice_applied_conv1d():
    """ExecuTorch's XNNPACK Conv1dUnsqueezePass unsqueezes a conv1d weight in place; with the
    weight shared, the second conv found it 4-D and to_edge_transform_and_lower failed (the
    fuzzer found it). convert_pt2e now gives each use its own weight."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = Conv1dTwice().eval()
    converted = _converted(model, (2, 8, 16))
    weights = [n.args[1].args[0].target for n in converted.graph.nodes
               if n.target == torch.ops.aten.conv1d.default]
    assert len(weights) == 2 and len(set(weights)) == 2, weights
    x = torch.randn(2, 8, 16)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (x,)),
                                       partitioner=[XnnpackPartitioner()])
    out = ExecuTorchRunner(bytes(edge.to_executorch().buffer))(x)
    assert sqnr(converted(x), out) >= MIN_SQNR_DB


class PooledTap(nn.Module):
    """``t = conv(x); return conv2(avg_pool(t)), t``: one dequantize of t feeds an output and a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        t = self.c1(x)
        return self.c2(nn.functional.avg_pool2d(t, 2)), t


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_to_executorch_runs_an_output_that_also_feeds_an_avg_pool(dynamic):
    """XNNPACK's runtime failed on this graph ("Propagating input shapes failed", torchao's flow
    too); to_executorch gives the output its own dequantize (SharedOutputPass)."""
    model = PooledTap().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=16)},) if dynamic else None
    converted = _converted(model, (2, 4, 8, 8), shapes)
    lowered = to_executorch(converted, (torch.randn(2, 4, 8, 8),), dynamic_shapes=shapes)
    for n in (2, 3) if dynamic else (2,):
        x = torch.randn(n, 4, 8, 8)
        for want, got in zip(converted(x), lowered(x), strict=True):
            assert sqnr(want, got) >= MIN_SQNR_DB


class TappedPermute(nn.Module):
    """``h = conv(x).permute(...); return h, linear(h.flatten(1))``: a graph output that is
    also flattened (the edge dialect's clone before the view, then dropped in the delegate)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(3, 3, 1), nn.Linear(12, 8)

    def forward(self, x):
        h = self.conv(x).permute(0, 2, 1)
        return self.fc(h.flatten(1)), h


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True])
def test_to_executorch_runs_a_permute_output_that_is_also_flattened(quantized):
    """With a dynamic batch, XNNPACK's preprocess refused this graph, float too ("Output node
    'aten_permute_copy_default' is already in the inputs"); to_executorch gives the output its
    own permute (SharedOutputPass) and the program runs at other batches."""
    model = TappedPermute().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=16)},)
    if quantized:
        model = _converted(model, (2, 3, 4), shapes)
    lowered = to_executorch(model, (torch.randn(2, 3, 4),), dynamic_shapes=shapes)
    for n in (1, 2, 5):
        x = torch.randn(n, 3, 4)
        for want, got in zip(model(x), lowered(x), strict=True):
            assert got.shape == want.shape
            assert sqnr(want, got) >= MIN_SQNR_DB


def test_shared_output_pass_copies_only_shared_dequantizes_and_permutes():
    class M(nn.Module):
        def forward(self, x):
            p = x.permute(1, 0)  # a graph output with no other user: left alone
            t = x.transpose(0, 1)
            y = x * 2  # a shared output, but neither a dequantize nor a layout op: left alone
            return p, t, t.flatten(), y, y + 1

    gm = torch.export.export(M(), (torch.randn(2, 3),)).module()
    x = torch.randn(2, 3)
    before = gm(x)
    assert SharedOutputPass()(gm).modified
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.aten.transpose.int) == 2
    assert ops.count(torch.ops.aten.permute.default) == 1
    assert ops.count(torch.ops.aten.mul.Tensor) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, gm(x), strict=True))
    assert not SharedOutputPass()(gm).modified
