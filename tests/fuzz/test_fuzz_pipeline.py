"""Fuzz the whole pipeline on random models from :mod:`fuzz.grammar`.

For each backend of :mod:`lowering.backends`: export (dynamic batch when the spec
says so), prepare with the backend's quantizer, calibrate, convert, lower, run.
Properties:

* nothing raises, in our code or the backend's; an op the backend cannot run in
  int8 stays float and the backend's check names it (the check itself must run);
* the lowered model's SQNR against float is above :func:`min_sqnr_db` (a function
  of the model's depth only); the converted model's too;
* the lowered model agrees with the converted model run in PyTorch
  (:func:`min_agreement_db`);
* the caller's inputs are never written (calibration, converted and lowered runs);
* ``torch.export.save``/``load`` of the converted program gives bit-identical outputs
  and constants.

Profiles (hypothesis settings): ``fast`` (default, derandomized: a few examples per
backend, in ``make test``) and ``long`` (``PT2E_FUZZ_PROFILE=long``, ``make fuzz``).
Every failure the fuzzer has found is kept in :data:`REGRESSIONS` (run by
``test_fuzzer_regressions``; one still failing is a strict xfail naming why).
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import UnsatisfiedAssumption
from support.numerics import sqnr

from fuzz.grammar import ModelSpec, build, inputs, model_specs
from lowering.backends import get_backend
from pt2e import prepare_pt2e
from pt2e.calibration import calibrate

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.filter_too_much],
    "print_blob": True,
}
# the fast profile does not shrink: a failure prints its spec, to be kept in REGRESSIONS.
# Profiles are applied per test (never settings.load_profile: that would change every
# other hypothesis test in the session).
settings.register_profile("fast", max_examples=2, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.generate], **_COMMON)
# the long profile: PT2E_FUZZ_EXAMPLES examples per lowering test (x4 for the cheap test), a
# fresh random seed each run, failures shrunk and saved in .hypothesis/ for replay
settings.register_profile("long", max_examples=int(os.environ.get("PT2E_FUZZ_EXAMPLES", "30")),
                          **_COMMON)
PROFILE = os.environ.get("PT2E_FUZZ_PROFILE", "fast")
if PROFILE not in ("fast", "long"):
    raise ValueError(f"PT2E_FUZZ_PROFILE={PROFILE!r}: use 'fast' or 'long'")
_SETTINGS = settings.get_profile(PROFILE)
#: the cheap (no lowering) property test runs this many times more examples
_PIPELINE_FACTOR = 4

BACKENDS = ("x86_inductor", "xnnpack", "onnx", "openvino")
_REQUIRES = {"xnnpack": "executorch.runtime", "onnx": "onnxruntime", "openvino": "openvino"}


_LOG = os.environ.get("PT2E_FUZZ_LOG")  # make fuzz: one line per example, for the run's record


@contextmanager
def _logged(test: str, backend: str, spec: ModelSpec) -> Iterator[None]:
    start, outcome = time.perf_counter(), "FAIL"
    try:
        yield
        outcome = "ok"
    except UnsatisfiedAssumption:
        outcome = "rejected"  # hypothesis rejected the example
        raise
    finally:
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {test} {backend} {outcome} "
                        f"{time.perf_counter() - start:.1f}s {spec!r}\n")


def min_sqnr_db(depth: int) -> float:
    """Float vs quantized: int8 gives 25-45 dB on one random layer (per-tensor weights: the
    lower end); each more layer costs some."""
    return max(8.0, 22.0 - 1.5 * depth)


def min_agreement_db(depth: int) -> float:
    """Lowered vs converted-in-PyTorch: they differ by rounding only."""
    return max(15.0, 35.0 - 1.5 * depth)


# the steepest slope of each elementwise activation a graph output may be computed through
_TAIL_SLOPE = {torch.ops.aten.relu.default: 1.0, torch.ops.aten.hardswish.default: 1.5,
               torch.ops.aten.gelu.default: 1.13}


def output_steps(converted: torch.fx.GraphModule) -> list[float | None]:
    """Per graph output: one quantization step of the dequantize it is computed from through
    elementwise activations only, times their steepest slopes (``None``: another op is between).

    A backend that rounds one value of that last quantize the other way moves the output by
    this much. On a small output (the fuzzer's 2 x 3 after a mean) that alone is below any
    SQNR threshold: XNNPACK's quantized mean rounded one of three non-zero values up a step
    (29 dB, closer to float than PyTorch's rounding; make fuzz 2026-12-07).
    """
    output = next(n for n in converted.graph.nodes if n.op == "output")
    steps: list[float | None] = []
    for leaf in torch.utils._pytree.tree_leaves(output.args[0]):
        node, slope = leaf, 1.0
        while isinstance(node, torch.fx.Node) and node.target in _TAIL_SLOPE:
            slope *= _TAIL_SLOPE[node.target]
            node = node.args[0]
        per_tensor = isinstance(node, torch.fx.Node) and node.target in (
            torch.ops.quantized_decomposed.dequantize_per_tensor.default,)
        steps.append(slope * float(node.args[1]) if per_tensor and isinstance(node.args[1], float) else None)
    return steps


def agree(expected: torch.Tensor, got: torch.Tensor, depth: int, step: float | None) -> bool:
    """Lowered ``got`` matches converted ``expected``: SQNR above :func:`min_agreement_db`, or
    no value more than one output-side quantization ``step`` apart (see :func:`output_steps`)."""
    if sqnr(expected, got) >= min_agreement_db(depth):
        return True
    return step is not None and float((expected - got).abs().max()) <= step * 1.001


def _outputs(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _call_keeps_input(fn: Any, x: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
    before = x.clone()
    out = _outputs(fn(x))
    assert torch.equal(x, before), f"{what} wrote into the caller's input"
    return out


def _export(spec: ModelSpec, model: torch.nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(spec)).module()


def _dynamic_shapes(spec: ModelSpec) -> Any:
    if not spec.dynamic:
        return None
    return {"x": {0: torch.export.Dim("batch", min=1, max=64)}}


def _batches(spec: ModelSpec) -> list[torch.Tensor]:
    """Calibration data: at another batch size than the export's when the batch is dynamic."""
    batch = 5 if spec.dynamic else spec.batch
    return [inputs(spec, batch, seed=100 + i) for i in range(4)]


def _eval_inputs(spec: ModelSpec) -> list[torch.Tensor]:
    """Inputs inside the calibrated range (slices of calibration batches), so that the SQNR
    thresholds measure quantization error, not clipping of a sample calibration never saw;
    with a dynamic batch, also at a batch size neither export nor calibration used."""
    batches = _batches(spec)
    xs = [batches[0][: spec.batch].clone()]
    if spec.dynamic:
        xs.append(batches[1][:4].clone())
    return xs


def _quantize(spec: ModelSpec, quantizer: Any, convert: Any) -> tuple[Any, Any, torch.Tensor]:
    model = build(spec)
    x = inputs(spec, seed=1)  # the export example: outside the calibrated range on purpose
    prepared = prepare_pt2e(_export(spec, model, x), quantizer)
    batches = _batches(spec)
    kept = [b.clone() for b in batches]
    calibrate(prepared, batches, progress=False)
    assert all(torch.equal(b, k) for b, k in zip(batches, kept)), "calibration wrote into its batches"
    return model, convert(prepared), x


def _check_roundtrip(spec: ModelSpec, converted: Any, x: torch.Tensor) -> None:
    ep = torch.export.export(converted, (x,), dynamic_shapes=_dynamic_shapes(spec))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    for a, b in zip(_outputs(ep.module()(x)), _outputs(loaded.module()(x))):
        assert torch.equal(a, b), "torch.export.load changed the converted program's outputs"
    saved, back = ep.state_dict, loaded.state_dict
    assert saved.keys() == back.keys()
    assert all(torch.equal(saved[k], back[k]) for k in saved)
    assert all(torch.equal(ep.constants[k], loaded.constants[k])
               for k in ep.constants if isinstance(ep.constants[k], torch.Tensor))


def _check_numerics(spec: ModelSpec, model: Any, converted: Any, x: torch.Tensor) -> None:
    for xe in _eval_inputs(spec):
        ref = _outputs(model(xe))
        got = _call_keeps_input(converted, xe, "the converted model")
        for r, g in zip(ref, got, strict=True):
            assert sqnr(r, g) >= min_sqnr_db(spec.depth), (sqnr(r, g), spec)


# ---- the cheap property: quantize with every quantizer, no lowering

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["x86_inductor", "xnnpack", "openvino"])
@settings(_SETTINGS, max_examples=_SETTINGS.max_examples * _PIPELINE_FACTOR)
@given(spec=model_specs())
def test_quantized_pipeline_properties(backend: str, spec: ModelSpec) -> None:
    b = get_backend(backend)
    with _logged("pipeline", backend, spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, converted, x = _quantize(spec, b.quantizer(**b.recommended_config_kwargs()), b.convert)
        _check_numerics(spec, model, converted, x)
        _check_roundtrip(spec, converted, x)


# ---- lowering to every backend that runs here

def _lower_and_check(backend: str, spec: ModelSpec) -> None:
    if backend in _REQUIRES:
        pytest.importorskip(_REQUIRES[backend])
    b = get_backend(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, converted, x = _quantize(spec, b.quantizer(**b.recommended_config_kwargs()), b.convert)
        options: dict[str, Any] = {}
        if spec.dynamic and backend in ("xnnpack", "onnx"):
            options["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
        x_before = x.clone()
        lowered = b.lower(converted, (x,), **options)
        assert torch.equal(x, x_before), f"{backend} lowering wrote into the example input"
        # an op the backend ran in float is named by its check (not a failure: it is reported)
        problems = b.check(converted, lowered)
        assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems)
        # a batch other than the export's is only promised where the lowering takes dynamic shapes
        xs = _eval_inputs(spec) if options or backend == "x86_inductor" else _eval_inputs(spec)[:1]
        steps = output_steps(converted)
        for xe in xs:
            ref = _outputs(model(xe))
            expected = _outputs(converted(xe))
            got = _call_keeps_input(lowered, xe, f"the {backend} model")
            for r, e, g, step in zip(ref, expected, got, steps, strict=True):
                assert g.shape == e.shape, (g.shape, e.shape)
                assert sqnr(r, g) >= min_sqnr_db(spec.depth), (sqnr(r, g), spec)
                assert agree(e, g, spec.depth, step), (sqnr(e, g), float((e - g).abs().max()), step, spec)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@settings(_SETTINGS)
@given(spec=model_specs())
def test_lowered_pipeline_properties(backend: str, spec: ModelSpec) -> None:
    with _logged("lowered", backend, spec):
        _lower_and_check(backend, spec)


# ---- every failure the fuzzer found, kept: (backend, spec, reason it still fails or None)

#: still-failing regressions whose failure may depend on the CPU (an xfail, not a strict one)
_NOT_STRICT: set[str] = set()
REGRESSIONS: list[tuple[str, ModelSpec, str | None]] = [
    # a test input outside the calibrated range scored 17.9 dB: the harness now evaluates inside it
    ("xnnpack", ModelSpec(kind="vec", channels=8, size=1, steps=(("reuse",), ("act", "relu"), ("add", "gelu")),
                          two_outputs=True, dynamic=True, batch=3, seed=64405), None),
    # x + relu/gelu(linear(x)) crashed Inductor's qlinear post-op fusion (a bare AssertionError,
    # torchao's flow too): compile_x86 now runs such linears in fp32 and warns
    # (lowering.x86_checks.avoid_unary_then_add)
    ("x86_inductor", ModelSpec(kind="vec", channels=8, size=1, steps=(("add", "gelu"),), batch=3, seed=64405), None),
    ("x86_inductor", ModelSpec(kind="vec", channels=8, size=1, steps=(("add", "relu"),), batch=3, seed=1), None),
    # Inductor compiled two int8 conv1d reading one input with different padding (k=1, k=3 with
    # padding 1) to the same padding, and the cat failed; float torch.compile was right:
    # compile_x86 now runs int8 conv1d as conv2d of height 1 (lowering.x86_checks.conv1d_as_conv2d)
    ("x86_inductor", ModelSpec(kind="seq1d", channels=4, size=4, steps=(("cat", 8),), batch=3, seed=4192), None),
    # per-tensor int8 XNNPACK weights on x + hardswish(conv1x1(x)) scored 25.6 dB against a
    # threshold of 28: the thresholds were too strict for per-tensor weights (now 22 - 1.5 * depth)
    ("xnnpack", ModelSpec(kind="img", channels=3, size=8, steps=(("add", "hardswish"), ("gap",)),
                          batch=2, seed=0), None),
    # an unfolded batch norm on (N, C, L) passed XNNPACK's partitioner and failed when the .pte
    # loaded ("Failed to create depthwise convolution node"): to_executorch now spells it x*s+t
    ("xnnpack", ModelSpec(kind="seq1d", channels=4, size=4, steps=(("pool", "max"), ("dead",), ("bn",),
                          ("add", "hardswish"), ("dead",), ("gap",)), batch=3, seed=1503), None),
    # found by make fuzz (2026-12-02 01:59): the .pte failed in XNNPACK's runtime ("Propagating
    # input shapes failed", static shapes too; torchao's flow the same) when one dequantize fed
    # both a graph output and an avg pool: to_executorch gives the output its own dequantize
    # (lowering.executorch_checks.SharedOutputPass)
    ("xnnpack", ModelSpec(kind="img", channels=4, size=8, steps=(("dead",), ("act", "relu"), ("conv", 4, 3, False),
                          ("pool", "avg"), ("conv", 12, 1, True), ("gap",), ("linear", 4, 1, False)),
                          two_outputs=True, dynamic=True, batch=2, seed=36429), None),
    # found by make fuzz (02:42): oneDNN's int8 conv1d has no hardswish (nor SiLU, hardtanh) post-op
    # and no residual add ("Unsupported post op hardswish for quantized pointwise conv1d"): fixed
    # by running int8 conv1d as conv2d (lowering.x86_checks.conv1d_as_conv2d)
    ("x86_inductor", ModelSpec(kind="seq1d", channels=3, size=4, steps=(("add", "hardswish"), ("gap",)),
                               batch=2, seed=0), None),
    # found by make fuzz (02:48): ExecuTorch's Conv1dUnsqueezePass unsqueezes a conv1d weight in
    # place, so a conv1d applied twice failed in to_edge_transform_and_lower: convert_pt2e now
    # gives each use its own weight (pt2e.untie.untie_shared_conv1d_weight)
    ("xnnpack", ModelSpec(kind="seq1d", channels=3, size=4, steps=(("reuse",), ("gap",)), batch=2, seed=0), None),
    # found by make fuzz on an AVX2-only CPU (2026-12-02 12:34): x = cat(conv_a(x), conv_b(x));
    # x + relu(conv(x)) made Inductor's qconv post-op fusion fail with a bare AssertionError
    # (x + relu(conv(x)) alone compiles): compile_x86 retries with such convs fp32, and warns
    ("x86_inductor", ModelSpec(kind="img", channels=3, size=4, steps=(("cat", 4), ("add", "relu")),
                               two_outputs=True, dynamic=True, batch=2, seed=0), None),
    # found by make fuzz (12:43): a batch norm after a quantized conv1d (its input a dequantize,
    # which has no shape in its meta) was not spelled x*s+t, and XNNPACK failed ("Weight and
    # Input should both be quantized"): BatchNormToAffinePass reads the batch norm's own shape
    ("xnnpack", ModelSpec(kind="seq1d", channels=8, size=4, steps=(("bn",), ("conv", 4, 1, False), ("bn",),
                          ("act", "hardswish"), ("gap",)), two_outputs=True, dynamic=True, batch=3, seed=2252),
     None),
    # found by make fuzz (13:02): a batch norm reading another batch norm (float, 4-D) failed in
    # ExecuTorch's DecomposeBatchNorm (KeyError 'val'; its stock flow too): BatchNormToAffinePass
    # spells the second one x*s+t
    ("xnnpack", ModelSpec(kind="img", channels=3, size=8, steps=(("bn",), ("bn",), ("gap",)),
                          two_outputs=True, batch=2, seed=0), None),
    # found by make fuzz (2026-12-02 13:37, AVX2-only CPU): OpenVINO's output was 5.6 dB from the
    # converted model (float models too): its CPU plugin fused x.mean(dim=2) of (N, C, L) with
    # the batch norm after it and computed it wrong; to_openvino rewrites such reductions
    # (lowering.openvino.rewrite_reductions)
    ("openvino", ModelSpec(kind="seq1d", channels=3, size=4, steps=(("conv", 4, 1, False), ("reuse",), ("cat", 4),
                           ("reuse",), ("gap",), ("bn",), ("linear", 8, 3, False), ("add", "relu"),
                           ("act", "hardswish")), batch=2, seed=0), None),
    # found by make fuzz (2026-12-07 05:00, AVX-512 VNNI CPU), reduced by hand: with a dynamic
    # batch, a linear reading attention's transposed (non-contiguous) output crashed Inductor's
    # int8 bmm pattern check (TypeError from torch.Size of a symbolic size); compile_x86 makes
    # that input contiguous (lowering.x86_checks.contiguous_linear_inputs)
    ("x86_inductor", ModelSpec(kind="img", channels=3, size=8, steps=(("to_tok",), ("attention", 1),
                               ("linear", 4, 3, False)), dynamic=True, batch=3, seed=0), None),
    # found by make fuzz (2026-12-07 05:49, AVX-512 VNNI CPU), shrunk by hypothesis: the tap and the
    # last output are one tensor (the dead branch changes nothing), and OpenVINO's frontend cannot
    # convert `return y, y` (float models too); to_openvino gives each repeat its own node
    # (lowering.openvino.distinct_outputs)
    ("openvino", ModelSpec(kind="vec", channels=3, size=1, steps=(("act", "relu"), ("dead",)),
                           two_outputs=True, batch=2, seed=0), None),
    # found by make fuzz (2026-12-07 06:20), shrunk by hypothesis: not a lowering bug but the
    # harness: XNNPACK's quantized mean rounded one of the 2 x 3 outputs a step the other way
    # (29.2 dB from the converted model, 37.0 dB from float); agreement now allows one step of
    # the output-side quantize (output_steps)
    ("xnnpack", ModelSpec(kind="tok", channels=3, size=8, steps=(("add", "relu"), ("mul",), ("dead",),
                          ("mean",), ("act", "relu"), ("act", "hardswish"), ("act", "relu")),
                          batch=2, seed=0), None),
    # found by make fuzz (2026-12-07 07:07), shrunk by hypothesis: the second output taps a
    # permute that is also flattened; with a dynamic batch ExecuTorch's XNNPACK preprocess refused
    # it ("Output node 'aten_permute_copy_default' is already in the inputs ... pass through
    # arguments", float models too): to_executorch gives the output its own permute
    # (lowering.executorch_checks.SharedOutputPass)
    ("xnnpack", ModelSpec(kind="seq1d", channels=3, size=4, steps=(("bn",), ("bn",), ("to_tok",), ("dead",),
                          ("flatten",), ("linear", 8, 1, False)), two_outputs=True, dynamic=True,
                          batch=2, seed=1), None),
]
# what a still-failing regression (one kept with a reason: a strict xfail) raises
_RAISES: dict[str, type[BaseException]] = {}


@pytest.mark.slow
@pytest.mark.parametrize("backend, spec", [
    pytest.param(b, spec, id=f"{b}-{i}",
                 marks=[pytest.mark.xfail(strict=why not in _NOT_STRICT, reason=why,
                                          raises=_RAISES.get(why, Exception))]
                 if why else [])
    for i, (b, spec, why) in enumerate(REGRESSIONS)
])
def test_fuzzer_regressions(backend: str, spec: ModelSpec) -> None:
    _lower_and_check(backend, spec)


@pytest.mark.slow
def test_fuzzer_regression_identity_model_converts() -> None:
    # a model whose only layer is dead is the identity after prepare's dead-code removal;
    # convert_pt2e refused it as "not exported" (pt2e/capture.py now tells the two apart)
    spec = ModelSpec(kind="vec", channels=8, size=1, steps=(("dead",),), batch=2, seed=3)
    b = get_backend("x86_inductor")
    model, converted, x = _quantize(spec, b.quantizer(**b.recommended_config_kwargs()), b.convert)
    _check_numerics(spec, model, converted, x)


class _Tail(torch.nn.Module):
    """dequantize -> hardswish -> relu as one output, dequantize -> linear as the other."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qd = torch.ops.quantized_decomposed
        d = qd.dequantize_per_tensor.default(qd.quantize_per_tensor.default(x, 0.02, 0, -128, 127, torch.int8),
                                             0.02, 0, -128, 127, torch.int8)
        return torch.relu(torch.nn.functional.hardswish(d)), self.fc(d)


def test_output_steps_follow_only_elementwise_activations() -> None:
    gm = torch.export.export(_Tail(), (torch.randn(2, 3),)).module()
    assert output_steps(gm) == [pytest.approx(1.5 * 0.02), None]


@pytest.mark.parametrize("moved, step, ok", [
    (0.029, 0.03, True),     # one value a step apart: a rounding difference
    (0.031, 0.03, False),    # more than a step
    (0.029, None, False),    # an op after the last quantize: only the SQNR threshold counts
], ids=["within-a-step", "beyond-a-step", "no-step"])
def test_agreement_allows_one_output_step_on_a_small_output(moved, step, ok) -> None:
    expected = torch.tensor([[0.0, 0.0, 0.16], [0.0, 0.14, 0.06]])
    got = expected.clone()
    got[0, 2] += moved
    assert sqnr(expected, got) < min_agreement_db(4)        # the threshold alone would fail it
    assert agree(expected, got, 4, step) is ok
