"""A linear reading a non-contiguous 3-D activation, exported with a dynamic batch, compiles on
x86 and runs its int8 kernel (lowering.x86_checks.contiguous_linear_inputs).

Found by the fuzzer (tests/fuzz): attention, then a transpose, then a linear, with
``Dim("batch")``; Inductor's int8 ``bmm`` pattern check failed with ``TypeError:
torch.Size() takes an iterable of 'int'`` inside ``compile_x86`` before the rewrite.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from support.numerics import sqnr
from torch import nn

from lowering import check_x86_int8, compile_x86
from lowering.x86_checks import contiguous_linear_inputs, noncontiguous_dynamic_linear_inputs
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.cpu import cpu_has_vnni
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


class TransposedLinear(nn.Module):
    """(B, C, L) -> relu -> transpose to (B, L, C) -> linear: the linear's input is a view."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(x).transpose(1, 2))


def _converted(dynamic: bool) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    gm = torch.export.export(TransposedLinear().eval(), (x,), dynamic_shapes=shapes).module()
    config = get_default_x86_inductor_quantization_config(reduce_range=not cpu_has_vnni())
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(config))
    for _ in range(4):
        prepared(torch.randn_like(x))
    return convert_pt2e(prepared), x


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "static"])
def test_rewrite_applies_only_to_dynamic_noncontiguous_inputs(dynamic):
    converted, x = _converted(dynamic)
    found = noncontiguous_dynamic_linear_inputs(converted)
    assert len(found) == (1 if dynamic else 0)
    rewritten = contiguous_linear_inputs(converted)
    assert (rewritten is converted) == (not dynamic)
    assert torch.equal(rewritten(x), converted(x))  # a copy changes no value
    assert noncontiguous_dynamic_linear_inputs(rewritten) == []


@pytest.mark.slow
def test_dynamic_batch_transposed_linear_compiles_int8():
    converted, x = _converted(dynamic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile_x86(converted, (x,))
    assert check_x86_int8(converted, compiled) == []
    for batch in (1, 3, 6):
        xb = torch.randn(batch, 8, 5)
        assert sqnr(converted(xb), compiled(xb)) > 30.0
