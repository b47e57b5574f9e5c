"""Int8 conv1d on x86 Inductor runs as a conv2d of height 1 (lowering.x86_checks.conv1d_as_conv2d).

oneDNN's int8 conv1d has no hardswish, SiLU or hardtanh post-op, takes no residual add, and
two conv1d of different padding on one input compiled to the same padding (all found by the
fuzzer, tests/fuzz); each case here failed in compile_x86 before the rewrite.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from support.numerics import sqnr
from torch import nn

from lowering import check_x86_int8, compile_x86
from lowering.x86_checks import conv1d_as_conv2d, int8_conv1d
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.cpu import cpu_has_vnni
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


class Block(nn.Module):
    def __init__(self, form: str, act: nn.Module) -> None:
        super().__init__()
        self.form, self.act = form, act
        self.conv, self.other = nn.Conv1d(8, 8, 1), nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x):
        if self.form == "post_op":
            return self.act(self.conv(x))
        if self.form == "residual":  # x + act(conv(x)), then act(x + conv(x))
            return self.act(x + self.conv(x + self.act(self.conv(x))))
        return torch.cat([self.conv(x), self.other(x)], dim=1)  # two paddings on one input


def _converted(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    config = get_default_x86_inductor_quantization_config(reduce_range=not cpu_has_vnni())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(),
                            X86InductorQuantizer().set_global(config))
    for _ in range(4):
        prepared(torch.randn_like(x))
    return convert_pt2e(prepared)


@pytest.mark.slow
@pytest.mark.parametrize("form, act", [
    ("post_op", nn.Hardswish()), ("post_op", nn.SiLU()), ("post_op", nn.ReLU6()),
    ("residual", nn.Hardswish()), ("residual", nn.ReLU()), ("cat", nn.Identity()),
])
def test_int8_conv1d_compiles_and_runs_int8(form, act):
    torch.manual_seed(0)
    model = Block(form, act).eval()
    x = torch.randn(2, 8, 16)
    converted = _converted(model, x)
    assert int8_conv1d(converted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile_x86(converted, (x,))
        got = compiled(x)
    assert check_x86_int8(converted, compiled) == []  # every conv ran an int8 kernel
    assert got.shape == converted(x).shape
    assert sqnr(converted(x), got) >= 30.0


def test_rewrite_is_exact_and_leaves_the_callers_model_alone():
    torch.manual_seed(0)
    model = Block("residual", nn.Hardswish()).eval()
    x = torch.randn(3, 8, 16)
    converted = _converted(model, x)
    before = str(converted.graph)
    rewritten = conv1d_as_conv2d(converted)
    assert str(converted.graph) == before
    assert not int8_conv1d(rewritten)
    assert torch.equal(rewritten(x), converted(x))
    assert conv1d_as_conv2d(rewritten) is rewritten  # nothing left to rewrite
