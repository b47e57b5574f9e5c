"""The X86 quantizer's public API is torchao-compatible (the names are pinned in tests/test_public_api.py)."""

from __future__ import annotations

import inspect

import pytest

import quantizers


@pytest.mark.parametrize("name", ["set_global", "set_module_type_qconfig", "set_module_name_qconfig",
                                  "set_function_type_qconfig"])
def test_config_methods_exist(name):
    assert callable(getattr(quantizers.X86InductorQuantizer(), name))


def test_default_config_signature_matches_torchao():
    sig = inspect.signature(quantizers.get_default_x86_inductor_quantization_config)
    assert [(p.name, p.default) for p in sig.parameters.values()] == [
        ("is_qat", False), ("is_dynamic", False), ("reduce_range", False)]
