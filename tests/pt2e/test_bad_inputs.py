"""The bad-input catalogue of issue 16 (pipeline side): each gets a clear project error or warning."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from support.reference_quantizer import ReferenceQuantizer

from pt2e import calibrate, convert_pt2e, prepare_pt2e
from pt2e.errors import ArgumentTypeError, ArgumentValueError, ObserverStateError, Pt2eError
from pt2e.ops import BATCH_NORM_OPS
from pt2e.prepare import observer_nodes
from quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)


def _x86():
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, y):
        return torch.relu(self.fc(x)) + y


def _prepared_two_inputs(batch=2):
    x, y = torch.randn(batch, 4), torch.randn(batch, 4)
    gm = torch.export.export(TwoInputs().eval(), (x, y)).module()
    return prepare_pt2e(gm, _x86()), (x, y)


def _prepared_conv(**export_kwargs):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    gm = torch.export.export(model, (x,), **export_kwargs).module()
    return prepare_pt2e(gm, _x86()), x


# --- batch / image size other than the export example's --------------------------------------

@pytest.mark.parametrize("shape, dim", [((5, 3, 8, 8), 0), ((2, 3, 9, 8), 2)], ids=["batch", "image"])
def test_calibrate_at_another_size_names_input_dim_and_the_dim_fix(shape, dim):
    prepared, _ = _prepared_conv()
    with pytest.raises(ArgumentValueError) as info:
        calibrate(prepared, [torch.randn(*shape)], progress=False)
    msg = str(info.value)
    assert f"calibrate: batch 0: input 'input' has size {shape[dim]} in dim {dim}" in msg
    assert f"dynamic_shapes=({{{dim}: torch.export.Dim(" in msg


def test_calling_the_prepared_model_at_another_batch_is_a_clear_error():
    prepared, _ = _prepared_conv()
    with pytest.raises(ArgumentValueError, match=r"model input 'input' has size 3 in dim 0.*"
                                                 r"exported with size 2.*torch\.export\.Dim"):
        prepared(torch.randn(3, 3, 8, 8))


def test_converted_model_at_another_batch_is_a_clear_error():
    prepared, x = _prepared_conv()
    prepared(x)
    converted = convert_pt2e(prepared)
    with pytest.raises(ArgumentValueError, match="has size 1 in dim 0"):
        converted(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("batch", [1, 2, 5, 33])
def test_dynamic_batch_export_calibrates_and_converts_at_any_batch(batch):
    dynamic = ({0: torch.export.Dim("batch")},)
    prepared, x = _prepared_conv(dynamic_shapes=dynamic)
    calibrate(prepared, [torch.randn(batch, 3, 8, 8)], progress=False)
    converted = convert_pt2e(prepared)
    assert converted(torch.randn(batch, 3, 8, 8)).shape == (batch, 4, 6, 6)


# --- dicts, wrong counts, float64 ----------------------------------------------------------

def test_dict_batches_calibrate_like_positional_ones():
    prepared, (x, y) = _prepared_two_inputs()
    twin = copy.deepcopy(prepared)
    assert calibrate(prepared, [{"x": x, "y": y}], progress=False) == 1
    calibrate(twin, [(x, y)], progress=False)
    a, b = convert_pt2e(prepared), convert_pt2e(twin)
    assert torch.equal(a(x, y), b(x, y))


@pytest.mark.parametrize("batch", [
    pytest.param(lambda x, y: (x,), id="too-few"),
    pytest.param(lambda x, y: (x, y, y), id="too-many"),
    pytest.param(lambda x, y: {"x": x, "z": y}, id="unknown-keyword"),
])
def test_wrong_number_of_inputs_is_a_clear_error(batch):
    prepared, (x, y) = _prepared_two_inputs()
    with pytest.raises(ArgumentValueError, match=r"calibrate: batch 0 has .* exported for \(x, y\)"):
        calibrate(prepared, [batch(x, y)], progress=False)


def test_float64_inputs_are_a_clear_error():
    prepared, (x, y) = _prepared_two_inputs()
    with pytest.raises(ArgumentTypeError, match=r"input 'x' is torch.float64.*exported with "
                                                r"torch.float32.*x.to\(torch.float32\)"):
        calibrate(prepared, [(x.double(), y.double())], progress=False)


# --- degenerate calibration ----------------------------------------------------------------

def test_all_zero_calibration_warns_naming_the_degenerate_observers():
    prepared, x = _prepared_conv()
    prepared(torch.zeros_like(x))
    with pytest.warns(UserWarning, match=r"degenerate range.*'activation_post_process_0' "
                                         r"\(observing node 'input_1'.*saw only zeros"):
        convert_pt2e(prepared)


def test_representative_calibration_does_not_warn():
    prepared, x = _prepared_conv()
    prepared(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        convert_pt2e(prepared)


def test_nan_values_are_skipped_with_one_warning_giving_the_count():
    prepared, x = _prepared_conv()
    x = x.clone()
    x[0, 0, 0, :3] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    prepared(x)
    with pytest.warns(UserWarning) as record:
        convert_pt2e(prepared)
    nonfinite = [str(w.message) for w in record if "NaN/Inf" in str(w.message)]
    assert len(nonfinite) == 1
    assert "'activation_post_process_0' (observing node 'input_1'" in nonfinite[0]
    assert "skipped 4 NaN/Inf value(s)" in nonfinite[0]


def test_all_nan_batch_says_saw_only_nan():
    prepared, x = _prepared_conv()
    prepared(torch.full_like(x, float("nan")))
    with pytest.raises(ObserverStateError, match="saw only NaN/Inf"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_pt2e(prepared)


def test_observer_alone_says_saw_only_nan():
    from observers import MinMaxObserver

    obs = MinMaxObserver()
    obs(torch.full((3,), float("nan")))
    with pytest.raises(ObserverStateError, match=r"saw only NaN/Inf \(3 value"):
        obs.calculate_qparams()


# --- scoped configs that match nothing -----------------------------------------------------

class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _head_graph():
    return torch.export.export(Head().eval(), (torch.randn(2, 4),)).module()


def test_misspelled_module_name_warns_with_the_closest_names():
    q = _x86().set_module_name_qconfig("haed", None)
    with pytest.warns(UserWarning, match=r"module name 'haed' matches no module.*did you mean 'head'"):
        prepare_pt2e(_head_graph(), q)


def test_module_type_not_in_the_model_warns():
    q = _x86().set_module_type_qconfig(torch.nn.Conv2d, None)
    with pytest.warns(UserWarning, match=r"set_module_type_qconfig\(conv2d.*no such operator"):
        prepare_pt2e(_head_graph(), q)


def test_xnnpack_module_type_not_in_the_model_warns():
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_module_type(torch.nn.Conv2d, None)
    with pytest.warns(UserWarning, match=r"module type Conv2d .* is not in the model; .*Linear"):
        prepare_pt2e(_head_graph(), q)


def test_matching_scopes_do_not_warn():
    q = _x86().set_module_name_qconfig("head", None).set_module_type_qconfig(torch.nn.Linear, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prepare_pt2e(_head_graph(), q)


# --- noise ---------------------------------------------------------------------------------

def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    stream = io.StringIO()  # not a tty, like a log file or CI
    monkeypatch.setattr("sys.stderr", stream)
    calibrate(torch.nn.Linear(3, 2), [torch.randn(1, 3)] * 3, progress=True)
    assert stream.getvalue() == ""


# --- the silent wrong answer: linear + batch norm on a 3-D input ---------------------------

def test_linear_bn_on_3d_input_is_not_folded_warns_and_matches_eager():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5)).eval()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 3)
        bn.weight.uniform_(-2, 2)
    x = torch.randn(2, 5, 3)
    gm = torch.export.export(model, (x,)).module()
    with pytest.warns(UserWarning, match=r"batch norm .* was not folded into node 'linear'"):
        prepared = prepare_pt2e(gm, ReferenceQuantizer())
    assert any(n.target in BATCH_NORM_OPS for n in prepared.graph.nodes if n.op == "call_function")
    assert observer_nodes(prepared)  # the linear is still quantized
    prepared(x)
    converted = convert_pt2e(prepared)
    # quantized, so not exact; the wrong fold was off by up to 2.95
    with torch.no_grad():
        assert float((converted(x) - model(x)).abs().max()) < 0.3


def test_project_errors_are_catchable_as_one_family():
    prepared, _ = _prepared_conv()
    with pytest.raises(Pt2eError):
        calibrate(prepared, [torch.randn(1, 3, 8, 8)], progress=False)
