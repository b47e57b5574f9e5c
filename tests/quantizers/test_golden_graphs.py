"""Golden converted graphs: every backend quantizer's exact q/dq/op sequence on the test models.

The goldens in ``tests/quantizers/golden/*.json`` were recorded before the quantizers
moved onto the shared engine (``quantizers/engine.py``); the refactor had to leave them
identical. Each entry is the converted graph's ``call_function`` sequence in graph order,
with the quantized dtype and range of every quantize/dequantize (scales are calibration
data, not structure). Regenerate after an intended change with::

    PT2E_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/quantizers/test_golden_graphs.py

and review the diff of the JSON files.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Callable

import pytest
import torch
from support import models as M
from support import x86_models as X
from torch import nn

from pt2e import convert_pt2e, move_exported_model_to_eval, prepare_pt2e, prepare_qat_pt2e
from pt2e.ops import DEQUANTIZE_OPS, QUANTIZE_OPS
from quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    XPUInductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_default_xpu_inductor_quantization_config,
    get_symmetric_quantization_config,
)

GOLDEN = pathlib.Path(__file__).parent / "golden"
REGENERATE = bool(os.environ.get("PT2E_REGENERATE_GOLDEN"))


class ConvTransposeBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ct, self.bn = nn.ConvTranspose2d(4, 6, 3), nn.BatchNorm2d(6)

    def forward(self, x):
        return torch.relu(self.bn(self.ct(x)))


class ScalarArith(nn.Module):
    """add/mul with Python scalars (XNNPACK turns them into constants), cat, permute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x) * 0.5 + 1.0
        return torch.cat([y, torch.relu(y)], 1).permute(1, 0)


class DepthwiseConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw, self.pw = nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.dw(x)))


def _shape_inputs(*shapes: tuple[int, ...]) -> Callable[[], tuple[torch.Tensor, ...]]:
    def make() -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        return tuple(torch.randn(*s, generator=g) for s in shapes)

    return make


def _x86(name: str) -> tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]:
    return (lambda: getattr(X, name)()), (lambda: X.example_inputs(name))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    **{name: _x86(name) for name in (
        "ConvBnRelu", "ConvAddRelu", "LinearRelu", "LinearAdd", "ConvPoolConv", "ConvCat",
        "Attention", "ResBlocks", "WithPooler", "SmallCNN", "MLP", "TransformerBlock",
    )},
    "AvgPoolCNN": (lambda: M.SmallCNN(), _shape_inputs((2, 3, 8, 8))),
    "MLPRelu": (lambda: M.MLP(), _shape_inputs((4, 16))),
    "AttentionFF": (lambda: M.Attention(), _shape_inputs((2, 6, 32))),
    "ConvTransposeBnRelu": (ConvTransposeBnRelu, _shape_inputs((2, 4, 6, 6))),
    "ScalarArith": (ScalarArith, _shape_inputs((4, 8))),
    "DepthwiseConv": (DepthwiseConv, _shape_inputs((2, 4, 8, 8))),
}


def _x86_matmul() -> X86InductorQuantizer:
    cfg = get_default_x86_inductor_quantization_config()
    return X86InductorQuantizer().set_global(cfg).set_function_type_qconfig(torch.matmul, cfg)


def _x86_skip_last() -> X86InductorQuantizer:
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    return q.set_module_type_qconfig(nn.Conv2d, None).set_module_name_qconfig("fc3", None)


def _xnnpack_mixed() -> XNNPACKQuantizer:
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_module_type(nn.Conv2d, get_symmetric_quantization_config(is_per_channel=True))
    q.set_operator_type(torch.ops.aten.linear.default, None)
    return q


# recipe -> (quantizer factory, is_qat)
RECIPES: dict[str, tuple[Callable[[], object], bool]] = {
    "x86_static": (lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config()), False),
    "x86_dynamic": (lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=True)), False),
    "x86_qat": (lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)), True),
    "x86_matmul": (_x86_matmul, False),
    "x86_partial": (_x86_skip_last, False),
    "xpu_static": (lambda: XPUInductorQuantizer().set_global(
        get_default_xpu_inductor_quantization_config()), False),
    "xpu_qat": (lambda: XPUInductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)), True),
    "xnnpack_per_tensor": (lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config()), False),
    "xnnpack_per_channel": (lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)), False),
    "xnnpack_dynamic": (lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)), False),
    "xnnpack_qat": (lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True)), True),
    "xnnpack_mixed": (_xnnpack_mixed, False),
}


def _describe(node: torch.fx.Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    if node.target in QUANTIZE_OPS or node.target in DEQUANTIZE_OPS:
        qmin, qmax, dtype = node.args[-3:]
        return f"{name}[{dtype}:{qmin}..{qmax}]"
    return name


def converted_sequence(recipe: str, model_name: str) -> list[str]:
    make_quantizer, is_qat = RECIPES[recipe]
    make_model, make_inputs = MODELS[model_name]
    torch.manual_seed(0)
    model, inputs = make_model(), make_inputs()
    model = model.train() if is_qat else model.eval()
    gm = torch.export.export(model, inputs).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = (prepare_qat_pt2e if is_qat else prepare_pt2e)(gm, make_quantizer())  # type: ignore[arg-type]
        prepared(*inputs)
        if is_qat:
            prepared = move_exported_model_to_eval(prepared)
        converted = convert_pt2e(prepared)
    return [_describe(n) for n in converted.graph.nodes if n.op == "call_function"]


def _golden_path(recipe: str) -> pathlib.Path:
    return GOLDEN / f"{recipe}.json"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_converted_graphs_match_golden(recipe):
    got = {name: converted_sequence(recipe, name) for name in MODELS}
    path = _golden_path(recipe)
    if REGENERATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    assert sorted(got) == sorted(want)
    for name in MODELS:
        assert got[name] == want[name], f"{recipe} / {name}: converted graph changed"


def test_goldens_quantize_something():
    """Guard against empty goldens: each recipe quantizes most models (the pins mean something)."""
    for recipe in RECIPES:
        want = json.loads(_golden_path(recipe).read_text())
        quantized = [m for m, seq in want.items() if any(s.startswith("quantize") for s in seq)]
        assert len(quantized) >= len(want) // 2, (recipe, quantized)
