"""The X86 names in the quantizers/lowering public surface are pinned and torchao-compatible."""

from __future__ import annotations

import inspect

import pytest

import lowering
import quantizers

X86_QUANTIZER_NAMES = {"X86InductorQuantizer", "get_default_x86_inductor_quantization_config",
                       "x86_needs_reduce_range"}
X86_LOWERING_NAMES = {"lower_pt2e_quantized_to_x86", "compile_x86", "X86CompiledModel",
                      "KernelReport", "kernel_report"}


def test_x86_names_are_exported():
    assert X86_QUANTIZER_NAMES <= set(quantizers.__all__)
    assert X86_LOWERING_NAMES <= set(lowering.__all__)


@pytest.mark.parametrize("name", ["set_global", "set_module_type_qconfig", "set_module_name_qconfig",
                                  "set_function_type_qconfig"])
def test_config_methods_exist(name):
    assert callable(getattr(quantizers.X86InductorQuantizer(), name))


def test_default_config_signature_matches_torchao():
    sig = inspect.signature(quantizers.get_default_x86_inductor_quantization_config)
    assert [(p.name, p.default) for p in sig.parameters.values()] == [
        ("is_qat", False), ("is_dynamic", False), ("reduce_range", False)]
