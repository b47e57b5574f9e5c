"""ActivationRangeMargin: widened activation qparams, what it leaves alone, and the gain on
unseen data with heavier tails than the calibration data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pt2e import (
    ActivationRangeMargin,
    ArgumentTypeError,
    ArgumentValueError,
    choose_margin,
    convert_pt2e,
    prepare_pt2e,
    quantize_with_recipe,
)
from pt2e.ops import QD
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from tests.support.numerics import sqnr
from tests.support.reference_quantizer import ReferenceQuantizer

Q = QD.quantize_per_tensor.default


class Branches(nn.Module):
    """linear -> relu, a cat of two branches (shared qparams), a sigmoid (fixed qparams)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return torch.sigmoid(self.c(h))


def _calibrated(quantizer=None, n: int = 4) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    torch.manual_seed(0)
    data = [torch.randn(8, 6) for _ in range(n)]
    gm = torch.export.export(Branches().eval(), (data[0],)).module()
    prepared = prepare_pt2e(gm, quantizer or ReferenceQuantizer())
    for x in data:
        prepared(x)
    return prepared, data


def _activation_qparams(converted: torch.fx.GraphModule) -> dict[str, tuple[float, int]]:
    """Static per-tensor quantize nodes by the name of the value they quantize."""
    return {str(n.args[0]): (float(n.args[1]), int(n.args[2]))
            for n in converted.graph.nodes if n.op == "call_function" and n.target == Q}


@pytest.mark.parametrize("factor", [1.0, 1.5, 3.0], ids=["x1", "x1.5", "x3"])
def test_every_observed_activation_scale_is_factor_times_the_calibrated_one(factor):
    prepared, _ = _calibrated()
    plain = _activation_qparams(convert_pt2e(copy.deepcopy(prepared)))
    margin = ActivationRangeMargin(factor)
    result = margin(prepared)
    widened = _activation_qparams(convert_pt2e(prepared))
    assert result.modified == (factor != 1.0)
    assert widened.keys() == plain.keys()
    for value, (scale, zp) in plain.items():
        if value == "sigmoid":  # FixedQParamsQuantizationSpec: the [0, 1) range stays
            assert widened[value] == (scale, zp) == (1.0 / 256.0, 0)
        else:
            assert widened[value][0] == pytest.approx(scale * factor, rel=1e-6)
            assert widened[value][1] == zp
    # one entry per observer: input, a, b, the cat group (shared by 4 edges), c; not sigmoid
    assert len(margin.widened) == 5
    cat_group = {widened[v] for v in ("relu", "relu_1", "cat")}
    assert len(cat_group) == 1  # still shared after widening


def test_weights_are_not_widened():
    prepared, _ = _calibrated()
    plain = convert_pt2e(copy.deepcopy(prepared))
    ActivationRangeMargin(2.0)(prepared)
    widened = convert_pt2e(prepared)

    def weight_scales(gm):
        return [gm.get_buffer(str(n.args[1].target)) for n in gm.graph.nodes
                if n.op == "call_function" and n.target == QD.dequantize_per_channel.default]

    assert len(weight_scales(plain)) == 3
    for a, b in zip(weight_scales(plain), weight_scales(widened), strict=True):
        assert torch.equal(a, b)


def test_derived_sources_dynamic_and_qat_observers_are_left_alone():
    derived, _ = _calibrated(ReferenceQuantizer(derived_bias=True))
    margin = ActivationRangeMargin(2.0)
    margin(derived)
    # each linear's input (x, the cat group) feeds its derived int32 bias and stays as
    # calibrated; only the linears' outputs widen
    assert sorted(w.observes.split("'")[1] for w in margin.widened) == ["linear", "linear_1", "linear_2"]
    for kind in (ReferenceQuantizer(dynamic=True), ReferenceQuantizer(is_qat=True)):
        prepared, _ = _calibrated(kind)
        m = ActivationRangeMargin(2.0)
        assert m(prepared).modified is False and m.widened == ()


def test_a_margin_helps_on_unseen_data_with_heavier_tails():
    """Calibrated on 2 small Gaussian batches, scored on Student-t inputs (heavier tails):
    the calibrated ranges clip the unseen outliers, and wider ones clip less."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    calib = [torch.randn(8, 16) for _ in range(2)]
    unseen = [torch.distributions.StudentT(3.0).sample((8, 16)) for _ in range(16)]
    gm = torch.export.export(model, (calib[0],)).module()
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config()))
    for x in calib:
        prepared(x)
    ref = torch.cat([model(x) for x in unseen]).detach()

    def score(factor: float) -> float:
        p = copy.deepcopy(prepared)
        ActivationRangeMargin(factor)(p)
        q = convert_pt2e(p)
        return sqnr(ref, torch.cat([q(x) for x in unseen]))

    plain, doubled, tripled = score(1.0), score(2.0), score(3.0)   # 6.4, 9.9, 13.2 dB here
    assert plain + 3.0 < doubled < tripled


@pytest.mark.parametrize("factor", [0.5, float("nan"), float("inf"), "2"], ids=["below-1", "nan", "inf", "str"])
def test_a_factor_below_one_or_not_a_number_is_a_clear_error(factor):
    with pytest.raises(ArgumentValueError, match="factor >= 1"):
        ActivationRangeMargin(factor)


def test_choose_margin_scores_each_factor_and_keeps_the_best_converted_model():
    prepared, _ = _calibrated()
    kept = copy.deepcopy(prepared.state_dict())
    unseen = torch.randn(8, 6) * 2.0  # wider than the calibration data
    ref = copy.deepcopy(prepared)(unseen)  # observers pass values through: the float output

    def score(q: torch.nn.Module) -> float:
        return sqnr(ref, q(unseen))

    choice = choose_margin(prepared, score, factors=(1.0, 1.5, 3.0))
    by_hand = []
    for f in (1.0, 1.5, 3.0):
        p = copy.deepcopy(prepared)
        ActivationRangeMargin(f)(p)
        by_hand.append((f, score(convert_pt2e(p))))
    assert choice.scores == tuple(by_hand)
    assert (choice.factor, choice.score) == max(by_hand, key=lambda fs: fs[1])
    assert choice.score == score(choice.model)
    assert choice.tried().startswith("x1: ") and "x1.5: " in choice.tried()
    assert all(torch.equal(v, kept[k]) for k, v in prepared.state_dict().items())  # not changed


def test_choose_margin_keeps_the_first_of_equal_scores_and_never_a_nan():
    prepared, _ = _calibrated()
    assert choose_margin(prepared, lambda q: 1.0, factors=(1.0, 2.0)).factor == 1.0
    scores = iter([float("nan"), 1.0, float("nan")])
    choice = choose_margin(prepared, lambda q: next(scores), factors=(1.0, 2.0, 3.0))
    assert (choice.factor, choice.score) == (2.0, 1.0)


def test_choose_margin_refuses_bad_arguments_before_any_work():
    prepared, _ = _calibrated()
    with pytest.raises(ArgumentValueError, match="at least one factor"):
        choose_margin(prepared, lambda q: 0.0, factors=())
    with pytest.raises(ArgumentValueError, match="factor >= 1"):
        choose_margin(prepared, lambda q: 0.0, factors=(1.0, 0.5))
    with pytest.raises(ArgumentTypeError, match="function of the converted model"):
        choose_margin(prepared, 3.0, factors=(1.0,))  # type: ignore[arg-type]


def test_a_model_without_observers_is_refused():
    prepared, _ = _calibrated()
    converted = convert_pt2e(prepared)
    with pytest.raises(ArgumentValueError, match="before convert_pt2e"):
        ActivationRangeMargin(1.5)(converted)
    with pytest.raises(ArgumentTypeError, match="prepared, calibrated GraphModule"):
        ActivationRangeMargin(1.5)(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_recipe_tries_margins_only_with_held_out_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    calib = [torch.randn(8, 16) for _ in range(2)]
    held_out = [torch.distributions.StudentT(3.0).sample((8, 16)) for _ in range(8)]
    gm = torch.export.export(model, (calib[0],)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())

    without = quantize_with_recipe(gm, quantizer, calib, family="transformer", alpha=0.5).report
    step = next(s for s in without.steps if s.name.startswith("activation range margin"))
    assert not step.applied and "not tried" in str(step) and "eval_data" in step.detail
    assert without.calibration_runs == 2          # default flow + one alpha

    result = quantize_with_recipe(gm, quantizer, calib, family="transformer", alpha=0.5,
                                  eval_data=held_out, margins=(1.5, 2.0))
    report = result.report
    step = next(s for s in report.steps if s.name.startswith("activation range margin"))
    assert step.applied and "x1.5" in step.detail and "x2" in step.detail
    assert report.calibration_runs == 2           # margins share each candidate's calibration
    smooth = next(s for s in report.steps if s.name.startswith("SmoothQuant"))
    assert "with margin x" in smooth.detail       # the smoothed model got its own margin
    ref = torch.cat([model(x) for x in held_out]).detach()
    final = sqnr(ref, torch.cat([result.model(x) for x in held_out]))
    assert final == pytest.approx(report.final, abs=0.05)
    assert report.final > report.baseline + 3.0
