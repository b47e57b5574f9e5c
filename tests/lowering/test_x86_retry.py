"""The x86 lowerings' one retry decision (lowering.x86_checks.retry_without_conv_post_ops): after
Inductor's conv post-op fusion fails, compile again with the unary-then-add convs fp32; after any
other error, re-raise (and warn about nothing)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowering.x86_checks import retry_without_conv_post_ops
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.ops import CONV_OPS, is_dequantize
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


class ConvReluAdd(nn.Module):
    """x + relu(conv(x)): the conv in the shape whose post-op fusion can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


def _converted(model: nn.Module) -> torch.fx.GraphModule:
    x = torch.randn(1, 4, 4, 4)
    prepared = prepare_pt2e(torch.export.export(model.eval(), (x,)).module(),
                            X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    prepared(x)
    return convert_pt2e(prepared)


def _error(filename: str, kind: type[BaseException]) -> BaseException:
    """An exception whose traceback has a frame in ``filename`` (as Inductor's would)."""
    try:
        exec(compile(f"raise {kind.__name__}()", filename, "exec"))
    except BaseException as e:  # noqa: BLE001 - the point is to keep it
        return e
    raise AssertionError("unreachable")


FUSION = ("torch/_inductor/fx_passes/quantization.py", AssertionError)


def _int8_convs(gm: torch.fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.target in CONV_OPS and is_dequantize(n.args[0]))


def test_a_post_op_fusion_failure_retries_with_those_convs_fp32():
    converted = _converted(ConvReluAdd())
    with pytest.warns(UserWarning, match=r"'conv2d'.*stay float"):
        fallback = retry_without_conv_post_ops(converted, _error(*FUSION), "compile_x86")
    assert fallback is not None and fallback is not converted
    assert (_int8_convs(converted), _int8_convs(fallback)) == (1, 0)


@pytest.mark.parametrize("where, kind", [
    ("torch/_inductor/fx_passes/quantization.py", TypeError),   # not the bare AssertionError
    ("torch/_inductor/lowering.py", AssertionError),             # not the fusion pass
], ids=["other-error-type", "other-file"])
def test_any_other_error_is_re_raised_without_a_warning(where, kind):
    converted = _converted(ConvReluAdd())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert retry_without_conv_post_ops(converted, _error(where, kind), "compile_x86") is None


def test_nothing_to_retry_without_a_conv_in_that_shape():
    converted = _converted(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))
    assert retry_without_conv_post_ops(converted, _error(*FUSION), "compile_x86") is None
    assert retry_without_conv_post_ops(nn.Linear(2, 2), _error(*FUSION), "compile_x86") is None
