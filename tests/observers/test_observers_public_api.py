"""The public surface of ``observers``: pinned names, torchao-compatible signatures, import hygiene."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path

import pytest
import torch

import observers

PACKAGE_DIR = Path(observers.__file__).parent

# observers.__all__ itself is pinned with every other package's in tests/test_public_api.py


def test_error_hierarchy() -> None:
    assert issubclass(observers.QuantizationConfigError, observers.Pt2eError)
    assert issubclass(observers.QuantizationConfigError, ValueError)
    assert issubclass(observers.ObserverStateError, observers.Pt2eError)
    assert issubclass(observers.ObserverStateError, RuntimeError)


def _modules() -> list[str]:
    return sorted(f"observers.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE_DIR)]))


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_forbidden_imports(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert not name.startswith("torchao"), (path.name, name)
            if name.startswith("torch.ao.quantization"):
                assert name == "torch.ao.quantization.fx._decomposed", (path.name, name)


@pytest.mark.parametrize("module_name", _modules())
def test_module_size_and_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, module_name
    assert len(inspect.getsource(module).splitlines()) < 600, module_name


# -- torchao compatibility: constructor argument names and defaults -------------------------

COMPAT_CLASSES = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "FixedQParamsObserver",
    "ReuseInputObserver",
    "RecordingObserver",
    "FakeQuantize",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "LearnableFakeQuantize",
    "DerivedObserverOrFakeQuantize",
    "UniformQuantizationObserverBase",
]


def _params(cls: type) -> list[tuple[str, object]]:
    return [
        (p.name, p.default)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


@pytest.fixture(scope="module")
def torchao_pt2e():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("torchao.quantization.pt2e")


@pytest.mark.parametrize("name", COMPAT_CLASSES)
def test_constructor_matches_torchao(name: str, torchao_pt2e) -> None:
    ours, ref = _params(getattr(observers, name)), _params(getattr(torchao_pt2e, name))
    ref_names = [n for n, _ in ref]
    # Same names in the same order; torchao's extra ``factory_kwargs`` travel via **kwargs in
    # some subclasses, which we spell out.
    assert [n for n, _ in ours if n in ref_names] == ref_names
    for (n, default), (_, ref_default) in zip([p for p in ours if p[0] in ref_names], ref):
        if isinstance(default, type):  # a default observer class: ours vs torchao's, same name
            default, ref_default = default.__name__, getattr(ref_default, "__name__", ref_default)
        assert default == ref_default, (name, n)


DEFAULT_CONSTRUCTORS = sorted(importlib.import_module("observers.defaults").__all__)


@pytest.mark.parametrize("name", DEFAULT_CONSTRUCTORS)
def test_default_constructors_match_torchao(name: str, torchao_pt2e) -> None:
    fake_quantize = importlib.import_module("torchao.quantization.pt2e.fake_quantize")
    observer = importlib.import_module("torchao.quantization.pt2e.observer")
    ref = getattr(fake_quantize, name, None) or getattr(observer, name)
    ours = getattr(observers, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours(), ref()
    assert type(a).__name__ == type(b).__name__
    for attr in (
        "dtype",
        "qscheme",
        "quant_min",
        "quant_max",
        "ch_axis",
        "is_dynamic",
        "reduce_range",
        "averaging_constant",
    ):
        for x, y in (
            (a, b),
            (
                getattr(a, "activation_post_process", None),
                getattr(b, "activation_post_process", None),
            ),
        ):
            if x is not None and hasattr(y, attr):
                assert getattr(x, attr) == getattr(y, attr), (name, attr)


def test_partial_wrapper_exposes_keywords() -> None:
    ctr = observers.MinMaxObserver.with_args(dtype=torch.qint8)
    assert ctr.p.keywords == {"dtype": torch.qint8}
    assert isinstance(ctr(), observers.MinMaxObserver)


def test_with_callable_args_evaluates_per_instance() -> None:
    calls = []
    ctr = observers.FixedQParamsObserver.with_callable_args(
        scale=lambda: calls.append(1) or 0.5
    ).with_args(zero_point=0)
    ctr()
    ctr()
    assert len(calls) == 2
