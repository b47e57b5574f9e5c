"""pt2e.accuracy: the per-layer table ranks a planted bad layer first, its numbers are right,
and it saves as Markdown/CSV/JSON/PNG. pt2e.fallback: reaches a target full int8 misses by
keeping only the planted layer float."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from support.numerics import sqnr
from torch import nn

from pt2e import convert_pt2e, generate_numeric_debug_handle, prepare_pt2e, quantization_report
from pt2e.accuracy import compare, run_batches
from pt2e.errors import ArgumentValueError, UnsupportedOperationError
from pt2e.fallback import accuracy_aware_fallback
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)


def x86() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range()))


class Chain(nn.Module):
    """fc1 -> relu -> (one channel x1000) -> bad -> relu -> fc3: ``bad``'s input range is
    all outlier, so its other channels quantize to nothing and fc3 inherits the damage."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bad, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)
        scale = torch.ones(32)
        scale[0] = 1000.0
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.bad.weight[:, 0] = 0.0

    def forward(self, x):
        h = torch.relu(self.fc1(x)) * self.scale
        return self.fc3(torch.relu(self.bad(h)))


# a generator of its own: module-level data must not depend on what collection ran before
_DATA = torch.Generator().manual_seed(0)
CALIB = [torch.randn(8, 16, generator=_DATA) for _ in range(4)]
EVAL = [torch.randn(8, 16, generator=_DATA) for _ in range(2)]


def quantized_pair(model: nn.Module):
    ep = torch.export.export(model.eval(), (CALIB[0],))
    generate_numeric_debug_handle(ep)
    float_gm = copy.deepcopy(ep.module())
    prepared = prepare_pt2e(ep.module(), x86())
    run_batches(prepared, CALIB)
    return float_gm, convert_pt2e(prepared)


@pytest.fixture(scope="module")
def chain_report():
    torch.manual_seed(0)
    model = Chain()
    float_gm, quantized = quantized_pair(model)
    return model, float_gm, quantized, compare(float_gm, quantized, EVAL)


def test_planted_bad_layer_ranks_first_and_its_successor_inherits(chain_report):
    _, _, _, report = chain_report
    worst = report.layers[0]
    assert worst.module == "bad" and worst.op == "aten.linear.default"
    assert worst.origin == "layer" and worst.quantized
    fc3 = next(r for r in report.layers if r.module == "fc3")
    assert fc3.sqnr < 15.0  # it looks as bad...
    assert fc3.origin == "inherited" and fc3.layer_sqnr > fc3.sqnr + 10.0  # ...but is not


def test_output_layer_sqnr_matches_an_independent_computation(chain_report):
    model, _, quantized, report = chain_report
    with torch.no_grad():
        expected = sqnr(torch.cat([model(x) for x in EVAL]), torch.cat([quantized(x) for x in EVAL]))
    fc3 = next(r for r in report.layers if r.module == "fc3")
    assert fc3.sqnr == pytest.approx(expected, abs=1e-3)


def test_first_layer_own_error_is_its_whole_error(chain_report):
    _, _, _, report = chain_report
    fc1 = next(r for r in report.layers if r.module == "fc1" and "linear" in r.op)
    assert fc1.layer_sqnr == pytest.approx(fc1.sqnr, abs=1e-3)
    assert fc1.input_scales and fc1.weight_scale is not None


def test_saves_markdown_csv_json_and_png(chain_report, tmp_path):
    _, _, _, report = chain_report
    text = str(report)
    assert text.splitlines()[1].split()[:3] == ["module", "node", "op"]
    assert "bad" in text.splitlines()[2]
    md = report.save(tmp_path / "t.md").read_text()
    assert md.startswith("| module | node | op |") and md.count("\n") == len(report.layers) + 2
    csv_rows = report.save(tmp_path / "t.csv").read_text().strip().splitlines()
    assert len(csv_rows) == len(report.layers) + 1
    data = json.loads(report.save(tmp_path / "t.json").read_text())
    assert data["layers"][0]["module"] == "bad"
    pytest.importorskip("matplotlib")
    png = report.save(tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.size[0] > 100 and im.size[1] > 100


def test_plot_without_matplotlib_says_how_to_install(chain_report, tmp_path, monkeypatch):
    _, _, _, report = chain_report
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UnsupportedOperationError, match=r"pt2e\[plot\]"):
        report.plot(tmp_path / "t.png")


def test_models_from_different_exports_are_refused():
    model = Chain().eval()
    a = torch.export.export(model, (CALIB[0],)).module()
    b = torch.export.export(model, (CALIB[0],)).module()
    with pytest.raises(ArgumentValueError, match="deepcopy"):
        compare(a, b, EVAL)


TARGET_DB = 25.0


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    model = Chain().eval()
    return model, torch.export.export(model, (CALIB[0],)).module()


def test_fallback_meets_the_target_keeping_only_the_planted_layer_float(chain):
    model, gm = chain
    result = accuracy_aware_fallback(gm, x86(), CALIB, eval_data=EVAL, target_sqnr=TARGET_DB)
    report = result.report
    assert report.full_int8 < TARGET_DB, "the model must need the fallback"
    assert report.met and report.achieved >= TARGET_DB
    assert [r.module for r in report.records] == ["bad"]
    with torch.no_grad():  # independently: the returned model meets it
        got = sqnr(torch.cat([model(x) for x in EVAL]), torch.cat([result.model(x) for x in EVAL]))
    assert float(got) >= TARGET_DB
    assert quantization_report(result.model).quantized_ops == {"aten.linear.default": 2}
    # cost: the full-int8 run, then one try with one layer float
    assert report.calibration_runs == 2 and report.trials[0][0] == 0
    assert report.size_bytes < report.float_size_bytes
    assert "1 of 3 int8 layers kept float" in str(report)


def test_metric_and_tolerance_target(chain):
    model, gm = chain
    with torch.no_grad():
        ref = torch.cat([model(x) for x in EVAL])

    def cosine(m):
        with torch.no_grad():
            out = torch.cat([m(x) for x in EVAL])
        return float(torch.nn.functional.cosine_similarity(out, ref).mean())

    result = accuracy_aware_fallback(gm, x86(), CALIB, metric=cosine, tolerance=0.001)
    assert result.report.met and cosine(result.model) >= 0.999 - 1e-6
    assert len(result.report.records) <= 1


def test_target_is_required():
    gm = torch.export.export(Chain().eval(), (CALIB[0],)).module()
    with pytest.raises(ArgumentValueError, match="exactly one target"):
        accuracy_aware_fallback(gm, x86(), CALIB)
    with pytest.raises(ArgumentValueError, match="tolerance"):
        accuracy_aware_fallback(gm, x86(), CALIB, metric=lambda m: 1.0)


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)
        with torch.no_grad():  # statistics far from identity, so pre- and post-bn outputs differ
            self.bn.running_mean.uniform_(-2, 2)
            self.bn.running_var.uniform_(0.1, 3)
            self.bn.weight.uniform_(0.2, 3)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def test_compare_measures_a_folded_conv_against_the_batch_norm_output():
    torch.manual_seed(0)
    model = ConvBn().eval()
    images = [torch.randn(2, 3, 12, 12) for _ in range(3)]
    ep = torch.export.export(model, (images[0],))
    generate_numeric_debug_handle(ep)
    float_gm = copy.deepcopy(ep.module())
    prepared = prepare_pt2e(ep.module(), x86())
    run_batches(prepared, images)
    converted = convert_pt2e(prepared)
    rows = {r.module: r for r in compare(float_gm, converted, images[:1]).layers}
    # against the float conv's pre-normalisation output this row read about -4 dB
    assert rows["conv"].sqnr > 25, rows["conv"]
    assert rows["conv"].layer_sqnr is not None and rows["conv"].layer_sqnr > 25
    assert rows["head"].sqnr > 25, rows["head"]
