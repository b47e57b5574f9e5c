"""ONNX export (slow tier): converted models run in onnxruntime on integer kernels, with
PyTorch's numerics; narrow ranges and dynamic quantization, which the exporter's own
translations get wrong, each have a test that fails on the exporter's default behaviour."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from support.numerics import sqnr
from support.x86_models import MLP, SmallCNN, TransformerBlock

from lowering import OnnxExportError, check_onnx_int8, export_onnx, get_backend
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
    x86_needs_reduce_range,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

QD = torch.ops.quantized_decomposed
MIN_SQNR_VS_CONVERTED_DB = 45.0  # onnxruntime against our converted model run in PyTorch
MIN_SQNR_VS_FLOAT_DB = 15.0  # tiny random models, 4 random batches, 7-bit activations

QUANTIZERS = {
    # "x86": the config this machine needs: onnxruntime's u8*s8 kernels saturate full-range
    # uint8 activations without VNNI (as oneDNN's), so there it is the reduce_range one
    "x86": lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())),
    "x86_reduce_range": lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=True)),
    "x86_dynamic": lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=True, reduce_range=x86_needs_reduce_range())),
    "x86_dynamic_reduce_range": lambda: X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=True, reduce_range=True)),
    "xnnpack_per_tensor": lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config()),
    "xnnpack_per_channel": lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)),
    "xnnpack_dynamic": lambda: XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)),
}
MODELS = {
    "mlp": (MLP, (4, 32)),
    "cnn": (SmallCNN, (2, 3, 8, 8)),
    "transformer": (TransformerBlock, (2, 8, 32)),
}
# what onnxruntime 1.32 on x86 runs in float although the graph has it in int8 (docs/onnx.md):
# attention (no int8 SDPA kernel)
KNOWN_FLOAT = {
    ("transformer", "xnnpack_per_tensor"): ["scaled_dot_product_attention"],
    ("transformer", "xnnpack_per_channel"): ["scaled_dot_product_attention"],
}
DYNAMIC_KERNELS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _converted(model, shape, quantizer, steps=4, dynamic_shapes=None):
    captured = torch.export.export(model, (torch.randn(*shape),), dynamic_shapes=dynamic_shapes)
    prepared = prepare_pt2e(captured.module(), quantizer)
    for _ in range(steps):
        prepared(torch.randn(*shape))
    return convert_pt2e(prepared)


def _output_step(converted):
    out = next(n for n in converted.graph.nodes if n.op == "output").args[0][0]
    if out.target == QD.dequantize_per_tensor.default:
        return float(out.args[1])
    return None


def _assert_matches(converted, float_model, onnx_out, x):
    ref = converted(x)
    step = _output_step(converted)
    if step is not None:  # a quantized output: at most one step apart (a rounding flip)
        assert (onnx_out - ref).abs().max().item() <= step * 1.001
    else:
        assert sqnr(ref, onnx_out) >= MIN_SQNR_VS_CONVERTED_DB
    assert sqnr(float_model(x), onnx_out) >= MIN_SQNR_VS_FLOAT_DB


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("mname", list(MODELS))
def test_export_runs_integer_kernels_and_matches_pytorch(mname, qname):
    cls, shape = MODELS[mname]
    model = cls().eval()
    converted = _converted(model, shape, QUANTIZERS[qname]())
    x = torch.randn(*shape)
    lowered = export_onnx(converted, (x,))
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    report = lowered.report
    linear_int8 = sum(r.count for r in report.int8_records if "Conv" not in r.op)
    assert linear_int8 == n_linear, report
    if "dynamic" in qname:
        assert sum(report.count(k) for k in DYNAMIC_KERNELS) == n_linear, report
    if mname == "cnn" and qname.startswith("x86") and "dynamic" not in qname:
        # conv-relu-quantize: QDQ, fused by onnxruntime; conv+add (no quantize): ConvInteger
        assert (report.count("QLinearConv"), report.count("ConvInteger")) == (1, 1), report
    if mname == "cnn" and qname.startswith("xnnpack"):
        assert report.count("ConvInteger") == 2, report  # int8 activations: no QLinearConv
    problems = check_onnx_int8(converted, lowered)
    expected = KNOWN_FLOAT.get((mname, qname), [])
    assert len(problems) == len(expected), problems
    for problem, names in zip(problems, expected):
        assert names in problem
    _assert_matches(converted, model, lowered(x), x)


class _Conv1d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x) + x[:, :1, ::2]


@pytest.mark.parametrize("qname", ["x86", "xnnpack_per_channel"])
def test_conv1d_runs_conv_integer(qname):
    model = _Conv1d().eval()
    converted = _converted(model, (2, 4, 16), QUANTIZERS[qname]())
    assert any(n.target == torch.ops.aten.conv1d.default for n in converted.graph.nodes)
    x = torch.randn(2, 4, 16)
    lowered = export_onnx(converted, (x,))
    assert lowered.report.count("ConvInteger") == 1, lowered.report
    assert check_onnx_int8(converted, lowered) == []
    _assert_matches(converted, model, lowered(x), x)


def test_integer_linear_false_keeps_convs_qdq():
    converted = _converted(SmallCNN().eval(), (2, 3, 8, 8), QUANTIZERS["xnnpack_per_tensor"]())
    lowered = export_onnx(converted, (torch.randn(2, 3, 8, 8),), integer_linear=False)
    assert lowered.report.count("ConvInteger") == 0, lowered.report


def _qdq_module(qmin, qmax, dtype, scale=0.01, zero_point=0):
    class QDQ(torch.nn.Module):
        def forward(self, x):
            q = QD.quantize_per_tensor.default(x, scale, zero_point, qmin, qmax, dtype)
            return QD.dequantize_per_tensor.default(q, scale, zero_point, qmin, qmax, dtype)

    return torch.export.export(QDQ(), (torch.randn(4),)).module()


def _default_exporter(gm, x):
    """onnxruntime on the file torch.onnx.export writes with its own translations."""
    import onnxruntime as ort

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(torch.export.export(gm, (x,)), (x,), dynamo=True)
    sess = ort.InferenceSession(program.model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("qmin, qmax, dtype, values", [
    (0, 127, torch.uint8, [0.5, 1.0, 2.0, 3.0]),           # reduce_range (the issue's example)
    (-127, 127, torch.int8, [-2.0, -1.28, 0.3, 1.0]),       # symmetric +-127
    (-8, 7, torch.int8, [-0.2, -0.05, 0.06, 0.5]),          # int4 in int8
], ids=["reduce_range", "symmetric_127", "int4_in_int8"])
def test_narrow_ranges_keep_pytorch_numerics(qmin, qmax, dtype, values):
    gm = _qdq_module(qmin, qmax, dtype)
    x = torch.tensor(values)
    expected = gm(x)
    assert torch.equal(export_onnx(gm, (x,))(x), expected)
    # the exporter's own translation saturates to the dtype's range instead
    assert not torch.equal(_default_exporter(gm, x), expected)


def test_reduce_range_example_from_the_issue():
    gm = _qdq_module(0, 127, torch.uint8)
    x = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert export_onnx(gm, (x,))(x).tolist() == pytest.approx([0.5, 1.0, 1.27, 1.27])


def test_dynamic_quantization_fails_on_the_default_exporter_and_exports_with_ours():
    model = MLP().eval()
    full_range = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=True))
    converted = _converted(model, (4, 32), full_range)
    x = torch.randn(4, 32)
    with pytest.raises(Exception, match="choose_qparams"):
        _default_exporter(converted, x)
    lowered = export_onnx(converted, (x,))
    assert lowered.report.count("DynamicQuantizeMatMul") == 3, lowered.report
    if not x86_needs_reduce_range():  # without VNNI onnxruntime saturates full-range uint8
        assert sqnr(converted(x), lowered(x)) >= MIN_SQNR_VS_CONVERTED_DB


def test_dynamic_reduce_range_keeps_7bit_activations():
    """0..127 has no DynamicQuantizeLinear: the qparams are computed in the graph, with eps."""
    converted = _converted(MLP().eval(), (4, 32), QUANTIZERS["x86_dynamic_reduce_range"]())
    x = torch.randn(4, 32)
    lowered = export_onnx(converted, (x,))
    assert lowered.report.count("MatMulIntegerToFloat") == 3, lowered.report
    ops = {n.op_type for n in lowered.model_proto.graph.node}
    assert "DynamicQuantizeLinear" not in ops and "Clip" in ops
    assert sqnr(converted(x), lowered(x)) >= MIN_SQNR_VS_CONVERTED_DB


@pytest.mark.parametrize("qname", ["x86", "x86_dynamic"])
def test_dynamic_batch_runs_at_several_batch_sizes(qname):
    model = SmallCNN().eval() if qname == "x86" else MLP().eval()
    shape = (2, 3, 8, 8) if qname == "x86" else (4, 32)
    batch = torch.export.Dim("batch", min=1, max=64)
    # the batch must be dynamic from capture on: a graph captured static has it baked in
    converted = _converted(model, shape, QUANTIZERS[qname](), dynamic_shapes=({0: batch},))
    lowered = export_onnx(converted, (torch.randn(*shape),), dynamic_shapes=({0: batch},))
    for b in (1, 3, 17):
        x = torch.randn(b, *shape[1:])
        out = lowered(x)
        assert out.shape[0] == b
        assert sqnr(converted(x), out) >= MIN_SQNR_VS_CONVERTED_DB


def test_file_is_valid_with_int8_weights_inline_or_external(tmp_path):
    model = MLP(d=64).eval()
    converted = _converted(model, (4, 64), QUANTIZERS["x86"]())
    x = torch.randn(4, 64)
    inline = export_onnx(converted, (x,), path=tmp_path / "inline.onnx")
    onnx.checker.check_model(str(tmp_path / "inline.onnx"), full_check=True)
    assert not list(tmp_path.glob("inline.onnx.data"))
    int8_weights = [i for i in inline.model_proto.graph.initializer
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_weights) == 3
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        fp32 = torch.onnx.export(model, (x,), dynamo=True)
    assert fp32.model_proto.ByteSize() > 3 * inline.size_bytes
    external = export_onnx(converted, (x,), path=tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx").stat().st_size < (tmp_path / "inline.onnx").stat().st_size
    assert torch.equal(external(x), inline(x))


def test_int16_exports_at_opset_21_and_is_refused_before():
    gm = _qdq_module(-32768, 32767, torch.int16, scale=1e-4)
    x = torch.tensor([0.5, -1.0, 2.0, 3.3])
    assert torch.equal(export_onnx(gm, (x,), opset=21)(x), gm(x))
    with pytest.raises(OnnxExportError, match="node 'quantize_per_tensor'"):
        export_onnx(gm, (x,))


def test_registry_backend_runs_the_whole_flow():
    backend = get_backend("onnx")
    model = MLP().eval()
    quantizer = backend.quantizer(**backend.recommended_config_kwargs())
    prepared = prepare_pt2e(torch.export.export(model, (torch.randn(4, 32),)).module(), quantizer)
    prepared(torch.randn(4, 32))
    converted = backend.convert(prepared)
    lowered = backend.lower(converted, (torch.randn(4, 32),))
    assert backend.check(converted, lowered) == [], lowered.report
