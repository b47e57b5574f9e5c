"""The affine observers and AffineFakeQuantize against torchao's, and against closed form.

torchao runs once, in a subprocess (importing it patches Inductor): it computes
qparams, block sizes, fake-quantized outputs and its ``torch.ops.torchao`` ops on
inputs saved here, and ours must match them.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch

import pt2e  # noqa: F401  (registers torch.ops.pt2e.*)
from observers import (
    AffineFakeQuantize,
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
    MappingType,
    MinMaxObserver,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    ZeroPointDomain,
    default_affine_fake_quant,
    default_affine_per_axis_fake_quant,
    default_groupwise_fake_quant,
    get_block_size,
)
from pt2e.errors import ObserverStateError, QuantizationConfigError, UnsupportedOperationError

ROOT = pathlib.Path(__file__).resolve().parents[2]

# name -> (observer, kwargs); the granularity and mapping names are shared with the script
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "minmax_asym_u8_tensor": ("AffineQuantizedMinMaxObserver",
                              dict(mapping_type="ASYMMETRIC", target_dtype="uint8", granularity=("PerTensor",))),
    "minmax_sym_i8_axis0": ("AffineQuantizedMinMaxObserver",
                            dict(mapping_type="SYMMETRIC", target_dtype="int8", granularity=("PerAxis", 0))),
    "minmax_sym_int4_group16": ("AffineQuantizedMinMaxObserver",
                                dict(mapping_type="SYMMETRIC", target_dtype="int8", granularity=("PerGroup", 16),
                                     quant_min=-8, quant_max=7)),
    "minmax_asym_u8_token": ("AffineQuantizedMinMaxObserver",
                             dict(mapping_type="ASYMMETRIC", target_dtype="uint8", granularity=("PerToken",))),
    "minmax_noclip_int4_row": ("AffineQuantizedMinMaxObserver",
                               dict(mapping_type="SYMMETRIC_NO_CLIPPING_ERR", target_dtype="int8",
                                    granularity=("PerRow",), quant_min=-8, quant_max=7)),
    "minmax_asym_block": ("AffineQuantizedMinMaxObserver",
                          dict(mapping_type="ASYMMETRIC", target_dtype="uint8", granularity=("PerBlock", (4, 16)))),
    "minmax_asym_zp_none": ("AffineQuantizedMinMaxObserver",
                            dict(mapping_type="ASYMMETRIC", target_dtype="uint8", granularity=("PerToken",),
                                 zero_point_domain="NONE")),
    "minmax_float_zp": ("AffineQuantizedMinMaxObserver",
                        dict(mapping_type="ASYMMETRIC", target_dtype="uint8", granularity=("PerGroup", 32),
                             quant_min=0, quant_max=15, preserve_zero=False, zero_point_domain="FLOAT")),
    "moving_avg_asym_token": ("AffineQuantizedMovingAverageMinMaxObserver",
                              dict(mapping_type="ASYMMETRIC", target_dtype="int8", granularity=("PerToken",),
                                   averaging_constant=0.25)),
}

TORCHAO_SCRIPT = r"""
import sys, warnings, torch
warnings.filterwarnings("ignore")
from torchao.quantization.pt2e import MappingType, ZeroPointDomain, PerAxis, PerBlock, PerGroup, PerRow, PerTensor, PerToken
import torchao.quantization.pt2e._affine_quantization as aq
import torchao.quantization.pt2e.fake_quantize as fq
import torchao.quantization.quant_primitives  # registers torch.ops.torchao.*
G = dict(PerAxis=PerAxis, PerBlock=PerBlock, PerGroup=PerGroup, PerRow=PerRow, PerTensor=PerTensor, PerToken=PerToken)
d = torch.load(sys.argv[1])
out = {}
for name, (cls, kw) in d["cases"].items():
    kw = dict(kw)
    kw["mapping_type"] = MappingType[kw["mapping_type"]]
    kw["target_dtype"] = getattr(torch, kw["target_dtype"])
    kw["granularity"] = G[kw["granularity"][0]](*kw["granularity"][1:])
    if "zero_point_domain" in kw:
        kw["zero_point_domain"] = ZeroPointDomain[kw["zero_point_domain"]]
    obs = getattr(aq, cls)(**kw)
    for x in d["inputs"]:
        obs(x)
    s, z = obs.calculate_qparams()
    out[name] = dict(scale=s, zero_point=z, block_size=tuple(obs.block_size), min_val=obs.min_val, max_val=obs.max_val)
x = d["inputs"][0]
for name in ("default_affine_fake_quant", "default_groupwise_fake_quant", "default_affine_per_axis_fake_quant"):
    m = getattr(fq, name)()
    y = m(d["fq_input"])
    out[name] = dict(y=y, scale=m.scale, zero_point=m.zero_point, block_size=tuple(m.block_size))
ops = {}
for mapping in ("SYMMETRIC", "ASYMMETRIC"):
    for block in ([1, 16], [1, 64], [8, 64]):
        s, z = torch.ops.torchao.choose_qparams_affine(x, mapping, block, torch.int8, -8, 7)
        q = torch.ops.torchao.quantize_affine(x, block, s, z, torch.int8, -8, 7)
        dq = torch.ops.torchao.dequantize_affine(q, block, s, z, torch.int8, -8, 7, output_dtype=torch.float32)
        ops[(mapping, tuple(block))] = (s, z, q, dq)
out["ops"] = ops
torch.save(out, sys.argv[2])
"""


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(8, 64, generator=g) * torch.linspace(0.1, 3.0, 64)
    return [base, base * 1.5 + 0.3, torch.rand(8, 64, generator=g) * 4 - 1]


def _build(kw: dict[str, object]) -> dict[str, object]:
    kw = dict(kw)
    kw["mapping_type"] = MappingType[str(kw["mapping_type"])]
    kw["target_dtype"] = getattr(torch, str(kw["target_dtype"]))
    kind, *args = kw["granularity"]  # type: ignore[misc]
    kw["granularity"] = {"PerAxis": PerAxis, "PerBlock": PerBlock, "PerGroup": PerGroup, "PerRow": PerRow,
                         "PerTensor": PerTensor, "PerToken": PerToken}[kind](*args)
    if "zero_point_domain" in kw:
        kw["zero_point_domain"] = ZeroPointDomain[str(kw["zero_point_domain"])]
    return kw


@pytest.fixture(scope="module")
def torchao_results(tmp_path_factory):
    pytest.importorskip("torchao")
    tmp = tmp_path_factory.mktemp("affine")
    torch.save({"cases": CASES, "inputs": _inputs(), "fq_input": torch.randn(4, 256)}, tmp / "in.pt")
    proc = subprocess.run([sys.executable, "-c", TORCHAO_SCRIPT, str(tmp / "in.pt"), str(tmp / "out.pt")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = torch.load(tmp / "out.pt")
    data["fq_input"] = torch.load(tmp / "in.pt")["fq_input"]
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_observer_qparams_match_torchao(name, torchao_results):
    cls, kw = CASES[name]
    obs = {"AffineQuantizedMinMaxObserver": AffineQuantizedMinMaxObserver,
           "AffineQuantizedMovingAverageMinMaxObserver": AffineQuantizedMovingAverageMinMaxObserver}[cls](**_build(kw))
    for x in _inputs():
        obs(x)
    scale, zero_point = obs.calculate_qparams()
    ref = torchao_results[name]
    assert obs.block_size == ref["block_size"]
    torch.testing.assert_close(obs.min_val, ref["min_val"])
    torch.testing.assert_close(obs.max_val, ref["max_val"])
    torch.testing.assert_close(scale, ref["scale"], rtol=0, atol=0)
    if ref["zero_point"] is None:
        assert zero_point is None
    else:
        torch.testing.assert_close(zero_point, ref["zero_point"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default_affine_fake_quant", "default_groupwise_fake_quant",
                                  "default_affine_per_axis_fake_quant"])
def test_default_fake_quants_match_torchao(name, torchao_results):
    fq = {"default_affine_fake_quant": default_affine_fake_quant,
          "default_groupwise_fake_quant": default_groupwise_fake_quant,
          "default_affine_per_axis_fake_quant": default_affine_per_axis_fake_quant}[name]()
    y = fq(torchao_results["fq_input"])
    ref = torchao_results[name]
    assert fq.block_size == ref["block_size"]
    torch.testing.assert_close(fq.scale.float(), ref["scale"].float())
    torch.testing.assert_close(y, ref["y"])


@pytest.mark.slow
@pytest.mark.parametrize("mapping", ["SYMMETRIC", "ASYMMETRIC"])
@pytest.mark.parametrize("block", [[1, 16], [1, 64], [8, 64]], ids=["group16", "token", "tensor"])
def test_ops_match_torchao_ops(mapping, block, torchao_results):
    x = _inputs()[0]
    ref_s, ref_z, ref_q, ref_dq = torchao_results["ops"][(mapping, tuple(block))]
    s, z = torch.ops.pt2e.choose_qparams_affine(x, mapping, block, torch.int8, -8, 7)
    q = torch.ops.pt2e.quantize_affine(x, block, s, z, torch.int8, -8, 7)
    dq = torch.ops.pt2e.dequantize_affine(q, block, s, z, torch.int8, -8, 7, output_dtype=torch.float32)
    torch.testing.assert_close(s, ref_s, rtol=0, atol=0)
    assert z.dtype == ref_z.dtype
    torch.testing.assert_close(z, ref_z, rtol=0, atol=0)
    assert torch.equal(q, ref_q)
    torch.testing.assert_close(dq, ref_dq, rtol=0, atol=0)


# -- closed form -------------------------------------------------------------------------------

def test_symmetric_group_qparams_closed_form():
    x = torch.tensor([[-1.0, 0.5, 3.0, 1.5], [0.2, -0.4, 0.0, 0.0]])
    obs = AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(2), quant_min=-8, quant_max=7)
    obs(x)
    scale, zero_point = obs.calculate_qparams()
    amax = x.reshape(2, 2, 2).abs().amax(-1)
    torch.testing.assert_close(scale, torch.clamp(amax / 7.5, min=torch.finfo(torch.float32).eps))
    assert zero_point.eq(0).all() and obs.block_size == (1, 2)


def test_moving_average_and_running_minmax():
    ma = AffineQuantizedMovingAverageMinMaxObserver(MappingType.ASYMMETRIC, torch.uint8, PerToken(),
                                                     averaging_constant=0.5)
    mm = AffineQuantizedMinMaxObserver(MappingType.ASYMMETRIC, torch.uint8, PerToken())
    for x in (torch.tensor([[0.0, 2.0]]), torch.tensor([[-2.0, 4.0]])):
        ma(x)
        mm(x)
    assert ma.min_val.tolist() == [-1.0] and ma.max_val.tolist() == [3.0]
    assert mm.min_val.tolist() == [-2.0] and mm.max_val.tolist() == [4.0]


def test_get_block_size_for_every_granularity():
    shape = (2, 8, 16)
    assert get_block_size(shape, PerTensor()) == shape
    assert get_block_size(shape, PerAxis(1)) == (2, 1, 16)
    assert get_block_size(shape, PerGroup(4)) == (1, 1, 4)
    assert get_block_size(shape, PerRow()) == (1, 1, 16)
    assert get_block_size(shape, PerRow(1)) == (1, 8, 1)
    assert get_block_size(shape, PerToken()) == (1, 1, 16)
    assert get_block_size(shape, PerBlock((4, 8))) == (1, 4, 8)


def test_clear_errors():
    with pytest.raises(QuantizationConfigError, match="not divisible by the block size 5"):
        get_block_size((4, 16), PerGroup(5))
    with pytest.raises(QuantizationConfigError, match="granularity=.* must be a Granularity"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, "per_group")  # type: ignore[arg-type]
    with pytest.raises(QuantizationConfigError, match="do not fit target_dtype=torch.int8"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerTensor(), quant_min=-300, quant_max=7)
    with pytest.raises(ObserverStateError, match="has seen no data"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerTensor()).calculate_qparams()
    with pytest.raises(UnsupportedOperationError, match="averaging_constant=1"):
        AffineQuantizedMovingAverageMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerTensor(), is_dynamic=True)
    with pytest.raises(UnsupportedOperationError, match="keeps no statistics"):
        AffineQuantizedPlaceholderObserver(MappingType.SYMMETRIC, torch.int8, PerToken()).calculate_qparams()
    obs = AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerToken())
    obs(torch.randn(2, 4))
    with pytest.raises(ObserverStateError, match="same block layout"):
        obs(torch.randn(3, 4))


def test_affine_fake_quantize_trains_and_freezes():
    fq = AffineFakeQuantize(mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(4),
                            quant_min=-8, quant_max=7)
    w = torch.randn(2, 8, requires_grad=True)
    y = fq(w)
    levels = (y.detach().reshape(2, 2, 4) / fq.scale.reshape(2, 2, 1))
    torch.testing.assert_close(levels, levels.round())  # on the int4 grid of each group
    torch.testing.assert_close(fq.scale, w.detach().reshape(2, 2, 4).abs().amax(-1) / 7.5)
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # straight-through rounding
    fq.disable_observer()
    before = fq.scale.clone()
    fq(torch.randn(2, 8) * 10)
    assert torch.equal(fq.scale, before)
    with pytest.raises(QuantizationConfigError, match="AffineQuantizedObserverBase"):
        AffineFakeQuantize(observer=MinMaxObserver)
