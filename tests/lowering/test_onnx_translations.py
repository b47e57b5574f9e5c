"""Fast tier: the ONNX pre-export check, the optimized-graph reader and the translation table
(no export; the onnxruntime reader runs on a hand-built two-node model)."""

from __future__ import annotations

import pytest
import torch

from lowering import LoweringError, OnnxExportError, check_onnx_graph, onnxruntime_report
from lowering.onnx_checks import record_for
from lowering.onnx_translations import ConvPlan, narrow_range, translation_table
from pt2e.errors import Pt2eError

QD = torch.ops.quantized_decomposed


class _QDQ(torch.nn.Module):
    def __init__(self, dtype, qmin, qmax):
        super().__init__()
        self.args = (0.01, 0, qmin, qmax, dtype)

    def forward(self, x):
        return QD.dequantize_per_tensor.default(QD.quantize_per_tensor.default(x, *self.args), *self.args)


def _gm(module):
    return torch.export.export(module, (torch.randn(4),)).module()


@pytest.mark.parametrize("dtype, qmin, qmax", [(torch.uint8, 0, 255), (torch.int8, -128, 127),
                                               (torch.uint8, 0, 127), (torch.int8, -8, 7)],
                         ids=["u8", "s8", "u7", "int4-in-int8"])
def test_8bit_specs_pass_the_check_at_any_opset(dtype, qmin, qmax):
    check_onnx_graph(_gm(_QDQ(dtype, qmin, qmax)), opset=18)


def test_int16_needs_opset_21_and_the_error_names_the_node():
    gm = _gm(_QDQ(torch.int16, -32768, 32767))
    check_onnx_graph(gm, opset=21)
    with pytest.raises(OnnxExportError, match="node 'quantize_per_tensor'.*opset=21") as err:
        check_onnx_graph(gm, opset=18)
    assert isinstance(err.value, LoweringError) and isinstance(err.value, Pt2eError)
    assert isinstance(err.value, ValueError)


def test_int32_quantize_is_refused_naming_the_node():
    with pytest.raises(OnnxExportError, match="node 'quantize_per_tensor'.*torch.int32"):
        check_onnx_graph(_gm(_QDQ(torch.int32, -1000, 1000)), opset=21)


def test_narrow_range_is_relative_to_the_dtype():
    assert narrow_range(torch.uint8, 0, 127) and narrow_range(torch.int8, -127, 127)
    assert not narrow_range(torch.uint8, 0, 255) and not narrow_range(torch.int16, -32768, 32767)


def test_translation_table_covers_dynamic_ops_and_optionally_linear():
    table = translation_table()
    for op in (QD.choose_qparams.tensor, QD.quantize_per_tensor.tensor,
               QD.dequantize_per_tensor.tensor, QD.quantize_per_tensor.default):
        assert op in table
    assert torch.ops.aten.linear.default in table
    assert torch.ops.aten.linear.default not in translation_table(integer_linear=False)


@pytest.mark.parametrize("op_type, precision", [("QLinearConv", "int8"), ("DynamicQuantizeMatMul", "int8"),
                                                ("MatMulIntegerToFloat", "int8"), ("FusedGemm", "float"),
                                                ("MatMulNBits", "float")])
def test_records_classify_kernels(op_type, precision):
    assert record_for(op_type, "node_linear", ["y"], {"linear": "fc"}).precision == precision


def test_records_are_named_by_the_fx_node_even_when_onnxruntime_renames():
    modules = {"linear_2": "fc3"}
    r = record_for("MatMulIntegerToFloat", "MatMulIntegerToFloat_5", ["linear_2"], modules)
    assert (r.node, r.module) == ("linear_2", "fc3")
    assert record_for("QGemm", "node_linear_2", ["quantize_per_tensor_3"], modules).node == "linear_2"


def test_onnxruntime_report_reads_the_optimized_graph():
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    f = numpy_helper.from_array(np.ones((3, 2), np.float32), "f")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "zp"], ["acc"], name="node_linear"),
         helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["y", "f"], ["z"], name="node_mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])], [w, zp, f])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    report = onnxruntime_report(model.SerializeToString(), modules={"linear": "fc", "mm": ""})
    assert [(r.node, r.op, r.precision) for r in report.records] == [
        ("linear", "MatMulInteger", "int8"), ("mm", "MatMul", "float")]


def test_conv_translation_only_with_a_plan():
    conv2d = torch.ops.aten.conv2d.default
    assert conv2d not in translation_table()
    assert conv2d in translation_table(conv=ConvPlan())
    assert torch.ops.aten.conv1d.default in translation_table(conv=ConvPlan())
