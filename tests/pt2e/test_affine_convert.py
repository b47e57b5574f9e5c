"""torch.ops.pt2e affine ops (numerics vs closed form) and convert_pt2e emitting them.

Also: float8 specs (per-tensor and per-channel) and observers that define their own
``convert``, which convert_pt2e calls instead of inserting q/dq ops.
"""

from __future__ import annotations

import operator

import pytest
import torch
from support.numerics import sqnr
from support.reference_quantizer import LinearSpecQuantizer

from observers import (
    AffineFakeQuantize,
    AffineQuantizedMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
    MappingType,
    MinMaxObserver,
    ObserverBase,
    PerChannelMinMaxObserver,
    PerGroup,
    PerToken,
    ZeroPointDomain,
)
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import ObserverStateError, UnsupportedOperationError
from pt2e.quantizer import QuantizationSpec

AFF = torch.ops.pt2e
QD = torch.ops.quantized_decomposed


def count_targets(gm: torch.fx.GraphModule) -> dict[str, int]:
    """``{"pt2e.quantize_affine.default": 1, ...}``: call_function targets with their namespace."""
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            counts[str(n.target)] = counts.get(str(n.target), 0) + 1
    return counts


# -- the ops, against closed form --------------------------------------------------------------

def _groups(t: torch.Tensor, g: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-1], t.shape[-1] // g, g)


@pytest.mark.parametrize("block,view", [([1, 4], lambda t: _groups(t, 4)), ([1, 16], lambda t: t.unsqueeze(-2)),
                                        ([4, 16], lambda t: t.reshape(1, 1, -1))],
                         ids=["per_group", "per_token", "per_tensor"])
@pytest.mark.parametrize("mapping", ["SYMMETRIC", "ASYMMETRIC"])
def test_choose_quantize_dequantize_closed_form(block, view, mapping):
    x = torch.randn(4, 16) * 3 + 0.5
    qmin, qmax = -8, 7
    scale, zp = AFF.choose_qparams_affine(x, mapping, block, torch.int8, qmin, qmax)
    blocks = view(x)
    lo = blocks.amin(-1).clamp(max=0)
    hi = blocks.amax(-1).clamp(min=0)
    if mapping == "SYMMETRIC":
        ref_scale = torch.max(-lo, hi) / 7.5
        ref_zp = torch.zeros_like(ref_scale)
    else:
        ref_scale = (hi - lo) / 15
        ref_zp = torch.clamp(qmin - torch.round(lo / ref_scale), qmin, qmax)
    torch.testing.assert_close(scale.flatten(), ref_scale.flatten())
    torch.testing.assert_close(zp.float().flatten(), ref_zp.flatten())
    q = AFF.quantize_affine(x, block, scale, zp, torch.int8, qmin, qmax)
    s_b, z_b = ref_scale.unsqueeze(-1), ref_zp.unsqueeze(-1)
    ref_q = torch.clamp(torch.round(blocks * (1.0 / s_b)) + z_b, qmin, qmax)  # torchao: x * (1/scale)
    assert q.dtype == torch.int8 and torch.equal(q.float(), ref_q.reshape(x.shape))
    dq = AFF.dequantize_affine(q, block, scale, zp, torch.int8, qmin, qmax)
    torch.testing.assert_close(dq, ((ref_q - z_b) * s_b).reshape(x.shape))
    # round trip: every element within half a step of its block (nothing clipped with these ranges)
    assert ((dq - x).abs() <= (s_b / 2 + 1e-5).expand_as(blocks).reshape(x.shape)).all()


def test_quantize_without_zero_point_and_subbyte_storage():
    x = torch.tensor([[0.3, -0.7, 1.2, 0.05]])
    s = torch.tensor([0.1, 0.2])
    q = AFF.quantize_affine(x, [1, 2], s, None, torch.int4)
    assert q.dtype == torch.int8 and q.tolist() == [[3, -7, 6, 0]]
    torch.testing.assert_close(AFF.dequantize_affine(q, [1, 2], s, None, torch.int4),
                               torch.tensor([[0.3, -0.7, 1.2, 0.0]]))
    u = AFF.quantize_affine(x.abs(), [1, 4], torch.tensor([0.1]), torch.tensor([2]), torch.uint4)
    assert u.dtype == torch.uint8 and u.tolist() == [[5, 9, 14, 2]]  # round(x / 0.1) + 2


def test_choose_qparams_keepdim_and_dtypes():
    x = torch.randn(2, 3, 8)
    s, z = AFF.choose_qparams_affine(x, "ASYMMETRIC", [1, 1, 4], torch.uint8, keepdim=True)
    assert s.shape == z.shape == (2, 3, 2) and z.dtype == torch.int32 and s.dtype == torch.float32
    s, z = AFF.choose_qparams_affine(x, "SYMMETRIC", [1, 1, 8], torch.int8)
    assert s.shape == (2, 3) and z.dtype == torch.float32 and z.eq(0).all()


def test_ops_survive_export_as_single_nodes():
    class M(torch.nn.Module):
        def forward(self, x):
            s, z = AFF.choose_qparams_affine(x, "ASYMMETRIC", [1, 8], torch.int8)
            q = AFF.quantize_affine(x, [1, 8], s, z, torch.int8)
            return AFF.dequantize_affine(q, [1, 8], s, z, torch.int8)

    gm = torch.export.export(M(), (torch.randn(3, 8),)).module()
    counts = count_targets(gm)
    assert {k: v for k, v in counts.items() if k.startswith("pt2e.")} == {
        "pt2e.choose_qparams_affine.default": 1, "pt2e.quantize_affine.default": 1,
        "pt2e.dequantize_affine.default": 1}
    x = torch.randn(3, 8)
    torch.testing.assert_close(gm(x), M()(x))


# -- convert_pt2e ------------------------------------------------------------------------------

def _convert(quantizer, model, x):
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    prepared(x)
    return convert_pt2e(prepared)


GROUP_W = QuantizationSpec(
    dtype=torch.int8, quant_min=-8, quant_max=7, qscheme=None,
    observer_or_fake_quant_ctr=AffineQuantizedMinMaxObserver.with_args(
        mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(16),
        quant_min=-8, quant_max=7))
TOKEN_ACT = QuantizationSpec(
    dtype=torch.int8, qscheme=None, is_dynamic=True,
    observer_or_fake_quant_ctr=AffineQuantizedPlaceholderObserver.with_args(
        mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.int8, granularity=PerToken(), is_dynamic=True))


def test_groupwise_weight_and_per_token_activation_convert():
    model = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    x = torch.randn(2, 5, 32)
    converted = _convert(LinearSpecQuantizer(TOKEN_ACT, GROUP_W), model, x)
    counts = count_targets(converted)
    assert counts.get("pt2e.choose_qparams_affine.default") == 1
    assert counts.get("pt2e.quantize_affine.default") == 1  # the weight's is folded
    assert counts.get("pt2e.dequantize_affine.default") == 2
    assert not any(k.startswith("quantized_decomposed") for k in counts)
    dq_w = next(n for n in converted.graph.nodes if n.target == AFF.dequantize_affine.default
                and n.args[0].op == "get_attr")
    w_int = getattr(converted, dq_w.args[0].target)
    assert w_int.dtype == torch.int8 and w_int.min() >= -8 and w_int.max() <= 7
    assert dq_w.args[1] == [1, 16]

    # numerics: the same math written out by hand
    w, b = model[0].weight.detach(), model[0].bias.detach()
    wg = _groups(w, 16)
    ws = wg.abs().amax(-1, keepdim=True) / 7.5
    w_fq = (torch.clamp(torch.round(wg * (1.0 / ws)), -8, 7) * ws).reshape(w.shape)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    xs = (hi - lo) / 255
    xz = torch.clamp(-128 - torch.round(lo / xs), -128, 127)
    x_fq = (torch.clamp(torch.round(x * (1.0 / xs)) + xz, -128, 127) - xz) * xs
    torch.testing.assert_close(converted(x), torch.nn.functional.linear(x_fq, w_fq, b), rtol=1e-5, atol=1e-5)
    assert sqnr(model(x), converted(x)) > 15  # int4 weights


def test_affine_fake_quantize_converts_like_its_observer():
    w_spec = QuantizationSpec(dtype=torch.int8, qscheme=None, observer_or_fake_quant_ctr=AffineFakeQuantize.with_args(
        mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(16)))
    model = torch.nn.Sequential(torch.nn.Linear(32, 4)).eval()
    x = torch.randn(3, 32)
    converted = _convert(LinearSpecQuantizer(None, w_spec), model, x)
    assert count_targets(converted).get("pt2e.dequantize_affine.default") == 1
    assert sqnr(model(x), converted(x)) > 30


def test_uncalibrated_and_float_domain_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()
    x = torch.randn(2, 16)
    static_act = QuantizationSpec(dtype=torch.uint8, qscheme=None, observer_or_fake_quant_ctr=(
        AffineQuantizedMinMaxObserver.with_args(mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.uint8,
                                                granularity=PerToken())))
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), LinearSpecQuantizer(static_act, GROUP_W))
    with pytest.raises(ObserverStateError, match=r"observer 'activation_post_process_\d+' \(observing .*seen no data"):
        convert_pt2e(prepared)
    tinygemm = QuantizationSpec(dtype=torch.uint8, qscheme=None, observer_or_fake_quant_ctr=(
        AffineQuantizedMinMaxObserver.with_args(
            mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.uint8, granularity=PerGroup(16), quant_min=0,
            quant_max=15, preserve_zero=False, zero_point_domain=ZeroPointDomain.FLOAT)))
    with pytest.raises(UnsupportedOperationError, match="ZeroPointDomain.FLOAT.*Int4WeightOnlyConfig"):
        _convert(LinearSpecQuantizer(None, tinygemm), model, x)


# -- float8 ------------------------------------------------------------------------------------

F8_RANGES = {torch.float8_e4m3fn: (448, 22), torch.float8_e5m2: (57344, 15)}  # dtype: (max, SQNR dB)


@pytest.mark.parametrize("F8", sorted(F8_RANGES, key=str), ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_float8_spec_converts(per_channel, F8):
    top, min_sqnr = F8_RANGES[F8]
    act = QuantizationSpec(dtype=F8, quant_min=-top, quant_max=top, qscheme=torch.per_tensor_symmetric,
                           observer_or_fake_quant_ctr=MinMaxObserver)
    weight = QuantizationSpec(
        dtype=F8, quant_min=-top, quant_max=top,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0 if per_channel else None,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver if per_channel else MinMaxObserver)
    model = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 32)
    converted = _convert(LinearSpecQuantizer(act, weight), model, x)
    q_act = [n for n in converted.graph.nodes if n.target == QD.quantize_per_tensor.default]
    assert len(q_act) == 1 and q_act[0].args[3:] == (-top, top, F8)  # activation: torchao's op
    dq_w = [n for n in converted.graph.nodes if n.op == "call_function" and "dequantize" in str(n.target)
            and n.args[0].op == "get_attr"]
    assert len(dq_w) == 1
    w_const = getattr(converted, dq_w[0].args[0].target)
    assert w_const.dtype == F8
    if per_channel:  # quantized_decomposed's per-channel dequantize cannot subtract an int zero point from float8
        assert dq_w[0].target == AFF.dequantize_affine.default and dq_w[0].args[1] == [1, 32]
        assert dq_w[0].args[3] is None
    else:
        assert dq_w[0].target == QD.dequantize_per_tensor.default
    assert sqnr(model(x), converted(x)) > min_sqnr


# -- observers with their own convert ----------------------------------------------------------

class ClampObserver(ObserverBase):
    """A backend's custom scheme: no qparams, it rewrites its own node (here: a clamp)."""

    def __init__(self, dtype=torch.int8, **kwargs):
        super().__init__(dtype=dtype)
        self.calls = 0

    def forward(self, x):
        return x

    def calculate_qparams(self):
        return None

    def convert(self, model, observer_node):
        self.calls += 1
        with model.graph.inserting_before(observer_node):
            clamp = model.graph.call_function(torch.ops.aten.clamp.default, (observer_node.args[0], -0.5, 0.5))
        observer_node.replace_all_uses_with(clamp)
        model.graph.erase_node(observer_node)


def test_observer_with_own_convert_is_honoured():
    spec = QuantizationSpec(dtype=torch.int8, qscheme=None, observer_or_fake_quant_ctr=ClampObserver)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    x = torch.randn(3, 8)
    weight = QuantizationSpec(dtype=torch.int8, qscheme=torch.per_tensor_symmetric,
                              observer_or_fake_quant_ctr=MinMaxObserver)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), LinearSpecQuantizer(spec, weight))
    prepared(x)
    obs = next(m for m in prepared.modules() if isinstance(m, ClampObserver))
    converted = convert_pt2e(prepared)
    assert obs.calls == 1
    counts = count_targets(converted)
    assert counts.get("aten.clamp.default") == 1 and counts.get("quantized_decomposed.dequantize_per_tensor.default") == 1
    w_dq = next(n for n in converted.graph.nodes if n.target == QD.dequantize_per_tensor.default)
    w_fq = w_dq.target(getattr(converted, w_dq.args[0].target), *w_dq.args[1:])
    torch.testing.assert_close(converted(x), torch.nn.functional.linear(x.clamp(-0.5, 0.5), w_fq, model[0].bias))
    assert not any(n.target is operator.getitem for n in converted.graph.nodes)


def test_quantization_report_counts_affine_qdq_and_the_int8_linear():
    from pt2e import quantization_report

    model = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU()).eval()
    report = quantization_report(_convert(LinearSpecQuantizer(TOKEN_ACT, GROUP_W), model, torch.randn(2, 5, 32)))
    # choose_qparams feeds the activation's quantize; the weight's quantize was folded away
    assert (report.quantize, report.dequantize) == (1, 2)
    assert report.quantized_ops == {"aten.linear.default": 1}
    assert [r.op for r in report.other_float_ops] == ["aten.relu.default"]
