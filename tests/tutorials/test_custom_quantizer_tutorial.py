"""The backend-author tutorial: its example backend is short, public-API only, and does what it says."""

from __future__ import annotations

import ast
import pathlib

import torch

from tutorials import custom_quantizer

SOURCE = pathlib.Path(custom_quantizer.__file__).read_text()
BACKEND = SOURCE[SOURCE.index("# --- begin example backend"):SOURCE.index("# --- end example backend")]
PUBLIC = {"observers", "pt2e.quantizer", "pt2e.errors", "torch"}


def test_example_backend_is_under_100_lines_of_public_api():
    assert len(BACKEND.splitlines()) < 100
    modules = {n.module for n in ast.walk(ast.parse(SOURCE)) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(ast.parse(SOURCE)) if isinstance(n, ast.Import) for a in n.names}
    assert modules - {"__future__", "torch", "pt2e"} <= PUBLIC | {"torch.nn"}
    import importlib

    for module in modules - {"__future__"}:
        mod = importlib.import_module(module)
        for node in ast.walk(ast.parse(BACKEND)):
            if isinstance(node, ast.ImportFrom) and node.module == module and hasattr(mod, "__all__"):
                assert {a.name for a in node.names} <= set(mod.__all__), module


def test_tutorial_claims_hold():
    result = custom_quantizer.main()
    # 3 weighted layers: int8 weight + int32 bias each, dequantized per channel
    assert result["counts"] == {"dequantize_per_channel": 6, "quantize_per_tensor": 8,
                                "dequantize_per_tensor": 9}
    assert result["sqnr_db"] >= 40.0
    assert "transposed convolution" in result["refused"]
    converted = result["converted"]
    dq = torch.ops.quantized_decomposed.dequantize_per_channel.default
    int32 = [n for n in converted.graph.nodes if n.target == dq and n.args[-1] == torch.int32]
    assert len(int32) == 3
    # the bias scale is input scale x weight scale, per output channel
    from pt2e.graph import get_attr_value

    for layer in (n for n in converted.graph.nodes if n.target in (torch.ops.aten.conv2d.default,
                                                                   torch.ops.aten.linear.default)):
        x_dq, w_dq, b_dq = layer.args[:3]
        s_x, s_w, s_b = x_dq.args[1], get_attr_value(w_dq.args[1]), get_attr_value(b_dq.args[1])
        torch.testing.assert_close(s_b, (s_x * s_w).float())
    fixed = [n for n in converted.graph.nodes
             if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
             and n.args[1] == 1.0 / 256]
    assert len(fixed) == 1  # the sigmoid's fixed output qparams
