"""The public surface is deliberate, torchao-compatible, and torchao-free."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import pt2e
import pt2e.quantizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pt2e_all_is_pinned():
    assert sorted(pt2e.__all__) == sorted([
        "prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e", "capture_pre_autograd_graph",
        "calibrate", "quantization_report", "QuantizationReport",
        "move_exported_model_to_eval", "move_exported_model_to_train",
        "allow_exported_model_train_eval", "Pt2eError", "QuantizationConfigError",
        "ObserverStateError", "AnnotationError", "NotExportedModelError", "PipelineStateError",
    ])
    for name in pt2e.__all__:
        assert getattr(pt2e, name) is not None


def test_quantizer_contract_covers_torchao_names():
    ao = pytest.importorskip("torchao.quantization.pt2e.quantizer")
    # passes we run inside convert rather than export as classes
    internal = {"DuplicateDQPass", "PortNodeMetaForQDQ", "is_valid_annotation"}
    missing = set(ao.__all__) - internal - set(pt2e.quantizer.__all__)
    assert not missing


@pytest.mark.parametrize("name", ["prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e"])
def test_entry_point_signatures_match_torchao(name):
    ao = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    ours = inspect.signature(getattr(pt2e, name)).parameters
    theirs = inspect.signature(getattr(ao, name)).parameters
    assert [(p.name, p.default) for p in ours.values()] == \
        [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize("cls", ["QuantizationSpec", "FixedQParamsQuantizationSpec",
                                 "SharedQuantizationSpec", "DerivedQuantizationSpec",
                                 "QuantizationAnnotation", "QuantizationConfig"])
def test_spec_fields_match_torchao(cls):
    import dataclasses

    ao = pytest.importorskip("torchao.quantization.pt2e.quantizer")
    ours = [(f.name, f.default) for f in dataclasses.fields(getattr(pt2e.quantizer, cls))]
    theirs = [(f.name, f.default) for f in dataclasses.fields(getattr(ao, cls))]
    assert ours == theirs


_FORBIDDEN = re.compile(
    r"^\s*(from|import)\s+(torchao\b|torch\.ao\.quantization(?!\.fx\._decomposed\b))", re.M)


@pytest.mark.parametrize("package", ["pt2e", "observers", "quantizers", "lowering"])
def test_packages_do_not_import_torchao(package):
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
        if _FORBIDDEN.search(p.read_text())
    ]
    assert offenders == []
