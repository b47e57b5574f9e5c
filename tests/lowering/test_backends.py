"""The backend registry and the lowering contract: every registered backend quantizes, lowers
and proves its int8 kernels ran; errors name the problem; a backend author can add one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from support.models import MLP, export

import lowering
from lowering import (
    Backend,
    BackendImportError,
    DelegationReport,
    DuplicateBackendError,
    ExecuTorchProgram,
    Lowered,
    OutsideNode,
    UnknownBackendError,
    X86CompiledModel,
    check_x86_int8,
    check_xnnpack_int8,
    get_backend,
    kernel_report,
    list_backends,
    register_backend,
)
from lowering import backends as backends_module
from pt2e import calibrate, prepare_pt2e, quantization_report
from pt2e.cpu import cpu_has_vnni
from pt2e.errors import ArgumentValueError, Pt2eError
from pt2e.report import OpRecord, Report

SHAPE = (4, 16)


@pytest.fixture
def registry():
    """The registry, restored after the test (so toy backends do not leak)."""
    saved = dict(backends_module._REGISTRY)
    yield backends_module._REGISTRY
    backends_module._REGISTRY.clear()
    backends_module._REGISTRY.update(saved)


def _converted(backend: Backend, model: torch.nn.Module):
    quantizer = backend.quantizer(**backend.recommended_config_kwargs())
    prepared = prepare_pt2e(export(model, torch.randn(*SHAPE)), quantizer)
    calibrate(prepared, [torch.randn(*SHAPE) for _ in range(4)], progress=False)
    return backend.convert(prepared)


# --------------------------------------------------------------------------- round trip (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", [b.name for b in list_backends()])
def test_every_backend_round_trips_and_its_int8_kernels_run(name):
    backend = get_backend(name)
    if name == "xnnpack":
        pytest.importorskip("executorch.runtime")
    model = MLP((16, 32, 8)).eval()
    converted = _converted(backend, model)
    assert quantization_report(converted).quantized_ops["aten.linear.default"] == 2

    x = torch.randn(*SHAPE)
    lowered = backend.lower(converted, (x,))
    assert isinstance(lowered, Lowered)
    assert isinstance(lowered.report, Report)
    assert backend.check(converted, lowered) == [], str(lowered.report.summary())
    assert lowered.report.count(precision="int8") > 0, lowered.report.summary()
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), converted(x), atol=0.1, rtol=0.05)


@pytest.mark.slow
def test_x86_round_trip_calls_onednn_qlinear():
    backend = get_backend("x86_inductor")
    converted = _converted(backend, MLP((16, 32, 8)).eval())
    lowered = backend.lower(converted, (torch.randn(*SHAPE),))
    assert isinstance(lowered, X86CompiledModel)
    assert lowered.report.int8["onednn.qlinear_pointwise"] == 2, str(lowered.report)
    assert not lowered.report.float


@pytest.mark.slow
def test_xnnpack_round_trip_runs_quantized_linears_inside_the_delegate():
    pytest.importorskip("executorch.runtime")
    backend = get_backend("xnnpack")
    converted = _converted(backend, MLP((16, 32, 8)).eval())
    lowered = backend.lower(converted, (torch.randn(*SHAPE),))
    assert isinstance(lowered, ExecuTorchProgram)
    report = lowered.report
    assert report.num_delegates >= 1
    assert report.count("aten.linear", precision="int8") == 2, report.summary()
    assert report.weighted_outside == ()


# --------------------------------------------------------------------------- checks (fast)


def _x86_converted():
    return _converted(get_backend("x86_inductor"), MLP((16, 32, 8)).eval())


class _Lowered:
    """A stand-in artefact carrying a given report (no compilation)."""

    def __init__(self, report: Report):
        self.report = report

    def __call__(self, *args):
        raise AssertionError("not run in these tests")


def test_x86_check_names_linears_the_generated_code_ran_in_float():
    converted = _x86_converted()
    half = kernel_report(["buf1 = torch.ops.onednn.qlinear_pointwise.default(x)",
                          "extern_kernels.addmm(b, a, w, out=buf2)"])
    (problem,) = check_x86_int8(converted, _Lowered(half))
    assert "1 of 2 int8 linear" in problem
    assert "'linear'" in problem and "'linear_1'" in problem
    assert "buf2 (addmm)" in problem
    both = kernel_report(["buf1 = torch.ops.onednn.qlinear_pointwise.default(x)",
                          "buf2 = torch.ops.onednn.qlinear_pointwise.default(buf1)"])
    assert check_x86_int8(converted, _Lowered(both)) == []


def test_xnnpack_check_ignores_int8_linears_outside_the_delegate():
    converted = _converted(get_backend("xnnpack"), MLP((16, 32, 8)).eval())
    inside = OpRecord(node="aten_linear_default", op="aten.linear.default", precision="int8")
    outside = OutsideNode(node="aten_linear_default_1", op="aten.linear.default", precision="int8",
                          reason="not partitioned")
    report = DelegationReport(num_delegates=1, records=(inside, outside))
    program = ExecuTorchProgram(buffer=b"", report=report)
    (problem,) = check_xnnpack_int8(converted, program)
    assert problem.startswith("XNNPACK ran 1 of 2 int8 linear op(s)")
    full = DelegationReport(num_delegates=1, records=(inside, inside))
    assert check_xnnpack_int8(converted, ExecuTorchProgram(buffer=b"", report=full)) == []


def test_check_names_int8_ops_the_backend_has_no_kernel_for():
    from pt2e.ops import QD

    class Bmm(torch.nn.Module):
        def forward(self, a, b):
            a = QD.dequantize_per_tensor.default(a, 0.1, 0, -128, 127, torch.int8)
            b = QD.dequantize_per_tensor.default(b, 0.1, 0, -128, 127, torch.int8)
            return torch.bmm(a, b)

    a = torch.zeros(1, 2, 2, dtype=torch.int8)
    gm = torch.export.export(Bmm(), (a, a)).module()
    (problem,) = check_x86_int8(gm, _Lowered(kernel_report([])))
    assert "no int8 kernel for aten.bmm.default" in problem and "node 'bmm'" in problem


# --------------------------------------------------------------------------- the contract (fast)


def test_artefacts_satisfy_the_contract_and_their_reports_are_reports():
    program = ExecuTorchProgram(buffer=b"", report=DelegationReport(num_delegates=0))
    assert isinstance(program, Lowered)
    assert isinstance(program.report, Report)
    compiled = X86CompiledModel(torch.nn.Linear(2, 2))
    # compiles on its first call: no report, so not yet a Lowered
    assert not isinstance(compiled, Lowered)
    with pytest.raises(lowering.NotLoweredYetError, match="first call"):
        compiled.report
    compiled.kernels = kernel_report([])
    assert isinstance(compiled, Lowered) and isinstance(compiled.report, Report)


def test_report_types_are_one_type():
    for cls in (lowering.KernelReport, lowering.DelegationReport):
        assert issubclass(cls, Report)
    assert issubclass(OutsideNode, OpRecord)
    r = kernel_report(["buf1 = torch.ops.onednn.qconv_pointwise.default(x)"])
    assert r.to_dict()["records"][0] == {
        "type": "OpRecord", "node": "buf1", "op": "onednn.qconv_pointwise", "precision": "int8",
        "module": "", "reason": "", "count": 1}


# --------------------------------------------------------------------------- the registry (fast)


def test_registered_backends():
    assert [b.name for b in list_backends()][:2] == ["x86_inductor", "xnnpack"]
    assert get_backend("x86_inductor").recommended_config_kwargs() == {
        "reduce_range": not cpu_has_vnni()}
    assert get_backend("xnnpack").recommended_config_kwargs() == {}


@pytest.mark.parametrize("name, cls", [("x86_inductor", "X86InductorQuantizer"),
                                       ("xnnpack", "XNNPACKQuantizer")])
def test_quantizer_is_the_backends_class_with_its_default_config(name, cls):
    import quantizers

    quantizer = get_backend(name).quantizer()
    assert type(quantizer) is getattr(quantizers, cls)
    assert quantizer.global_config is not None


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UnknownBackendError, match="registered backends: .*x86_inductor, xnnpack") as err:
        get_backend("tensorrt")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert isinstance(err.value, Pt2eError)
    assert str(err.value).startswith("no backend named 'tensorrt'")


def test_a_backend_author_registers_a_toy_backend(registry):
    class Eager:
        def __init__(self, gm):
            self.gm = gm
            self.report = Report(title="eager", records=quantization_report(gm).records)

        def __call__(self, *args):
            return self.gm(*args)

    toy = register_backend(Backend(
        name="toy", description="runs the converted graph eagerly",
        quantizer_class="quantizers:XNNPACKQuantizer",
        default_config="quantizers:get_symmetric_quantization_config",
        lower_function=lambda model, example_inputs, **options: Eager(model),
        check_function=lambda converted, lowered: [],
    ))
    assert get_backend("toy") is toy and toy in list_backends()
    converted = _converted(toy, MLP((16, 32, 8)).eval())
    x = torch.randn(*SHAPE)
    lowered = toy.lower(converted, (x,))
    assert isinstance(lowered, Lowered)
    assert lowered.report.count("linear", precision="int8") == 2
    assert toy.check(converted, lowered) == []
    torch.testing.assert_close(lowered(x), converted(x))

    with pytest.raises(DuplicateBackendError, match="'toy' is already registered"):
        register_backend(toy)
    replaced = Backend(name="toy", description="v2", quantizer_class=toy.quantizer_class,
                       default_config=toy.default_config, lower_function=toy.lower_function,
                       check_function=toy.check_function)
    assert register_backend(replaced, replace=True) is get_backend("toy")


def test_default_convert_kwargs_reach_convert_pt2e():
    backend = Backend(name="no_fold", description="keeps float weights -> q -> dq",
                      quantizer_class="quantizers:XNNPACKQuantizer",
                      default_config="quantizers:get_symmetric_quantization_config",
                      lower_function="lowering:to_executorch",
                      check_function="lowering:check_xnnpack_int8",
                      default_convert_kwargs={"fold_quantize": False})
    converted = _converted(backend, MLP((16, 8)).eval())
    # unfolded: the weight is quantized in the graph (float weight -> q -> dq)
    assert quantization_report(converted).quantize == 3
    with pytest.raises(TypeError):
        backend.default_convert_kwargs["fold_quantize"] = True  # read-only


@pytest.mark.parametrize("ref, error", [
    ("quantizers.XNNPACKQuantizer", ArgumentValueError),
    (":XNNPACKQuantizer", ArgumentValueError),
    (42, TypeError),
], ids=["no_colon", "no_module", "not_callable"])
def test_bad_references_fail_when_the_backend_is_made(ref, error):
    with pytest.raises(error, match="quantizer_class"):
        Backend(name="bad", description="", quantizer_class=ref, default_config="m:f",
                lower_function="m:f", check_function="m:f")


def test_missing_module_fails_on_use_with_the_reference_named():
    backend = Backend(name="absent", description="", quantizer_class="no_such_pkg.sub:Quantizer",
                      default_config="no_such_pkg:cfg", lower_function="m:f", check_function="m:f")
    with pytest.raises(BackendImportError, match="'no_such_pkg.sub:Quantizer'") as err:
        backend.quantizer()
    assert isinstance(err.value, ImportError) and isinstance(err.value, Pt2eError)


def test_lowering_imports_no_quantizer_and_no_backend_runtime_at_module_level():
    # lowering -> pt2e only: the registry names quantizers by lazy strings, and ExecuTorch
    # is imported inside the functions that lower to it
    root = Path(lowering.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for name in names:
                assert name.split(".")[0] not in ("quantizers", "executorch", "torchao"), \
                    f"{path.name} imports {name} at module level"
