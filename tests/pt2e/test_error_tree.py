"""One error tree, seen as pt2e.errors.*; nothing bare escapes any of the four packages."""

from __future__ import annotations

import ast
import pathlib
import pickle
import traceback

import pytest
import torch
from support.models import MLP, export
from support.reference_quantizer import ReferenceQuantizer

import observers
import observers.errors
import pt2e.errors
from observers import MinMaxObserver, ObserverBase
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.errors import (
    ArgumentTypeError,
    Pt2eError,
    QuantizationConfigError,
    UnsupportedOperationError,
)
from pt2e.quantizer import QuantizationSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ["pt2e", "observers", "quantizers", "lowering"]
BUILTINS = {"TypeError", "ValueError", "RuntimeError", "KeyError", "NotImplementedError",
            "IndexError", "AssertionError", "Exception"}

# (file, source of the assert) -> why it guards an internal invariant, not user input
ALLOWED_ASSERTS = {
    ("pt2e/convert.py", "isinstance(x, Node)"):
        "prepare inserts every observer call with the observed node as its argument",
    ("pt2e/qat.py", "m is not None and v is not None"):
        "simulate_qat_conv_bn only rewrites batch norms that have running statistics",
}


def _sources():
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return exc.id if isinstance(exc, ast.Name) else None


def test_no_bare_builtin_error_is_raised():
    bare = [
        f"{rel}:{node.lineno} raises {_raised_name(node)}"
        for rel, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and _raised_name(node) in BUILTINS
    ]
    assert not bare, "raise a pt2e.errors class (which also inherits the builtin) instead: " \
        + "; ".join(bare)


def test_no_assert_checks_user_input():
    found = {
        (rel, ast.unparse(node.test)): node.lineno
        for rel, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert)
    }
    unexpected = {k: line for k, line in found.items() if k not in ALLOWED_ASSERTS}
    assert not unexpected, f"raise a pt2e.errors class instead of assert: {unexpected}"
    stale = set(ALLOWED_ASSERTS) - set(found)
    assert not stale, f"allow-list entries without an assert any more: {stale}"


def _tree():
    return [getattr(pt2e.errors, name) for name in pt2e.errors.__all__]


@pytest.mark.parametrize("cls", _tree(), ids=lambda c: c.__name__)
def test_every_error_is_public_under_pt2e_errors(cls):
    assert issubclass(cls, Pt2eError)
    assert cls.__module__ == "pt2e.errors"
    assert repr(cls) == f"<class 'pt2e.errors.{cls.__name__}'>"
    err = pickle.loads(pickle.dumps(cls("what happened")))
    assert type(err) is cls and str(err) == "what happened"


@pytest.mark.parametrize("cls", _tree(), ids=lambda c: c.__name__)
def test_every_error_below_the_base_is_also_a_builtin(cls):
    if cls is Pt2eError:
        return
    builtins = (TypeError, ValueError, RuntimeError, NotImplementedError)
    assert issubclass(cls, builtins), f"{cls.__name__} should also inherit the builtin it is"


def test_observers_errors_are_the_same_classes():
    for name in observers.errors.__all__:
        assert getattr(observers.errors, name) is getattr(pt2e.errors, name)
    assert observers.QuantizationConfigError is QuantizationConfigError


def test_a_traceback_names_pt2e_errors():
    with pytest.raises(QuantizationConfigError) as info:
        QuantizationSpec(dtype=torch.uint8, quant_min=10, quant_max=20,
                         observer_or_fake_quant_ctr=MinMaxObserver)
    line = traceback.format_exception_only(info.type, info.value)[-1]
    assert line.startswith("pt2e.errors.QuantizationConfigError: QuantizationSpec: ")


@pytest.mark.parametrize("kwargs", [{"fold_quantize": "yes"},
                                    {"use_reference_representation": 1}],
                         ids=["fold_quantize", "use_reference_representation"])
def test_convert_bool_arguments_raise_argument_type_error(kwargs):
    x = torch.randn(2, 16)
    prepared = prepare_pt2e(export(MLP(), x), ReferenceQuantizer())
    prepared(x)
    with pytest.raises(ArgumentTypeError, match="expected True or False") as info:
        convert_pt2e(prepared, **kwargs)
    assert isinstance(info.value, TypeError)


def test_prepare_rejects_a_non_quantizer_with_argument_type_error():
    with pytest.raises(ArgumentTypeError, match="expects a Quantizer") as info:
        prepare_pt2e(export(MLP(), torch.randn(2, 16)), object())
    assert isinstance(info.value, TypeError)


def test_unsupported_reset_is_not_implemented_and_pt2e_error():
    class Plain(observers.UniformQuantizationObserverBase):
        def forward(self, x):
            return x

        def calculate_qparams(self):
            return self._calculate_qparams(torch.tensor(0.0), torch.tensor(1.0))

    assert issubclass(Plain, ObserverBase)
    with pytest.raises(UnsupportedOperationError, match="cannot reset") as info:
        Plain().reset_min_max_vals()
    assert isinstance(info.value, NotImplementedError)
