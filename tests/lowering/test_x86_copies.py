"""compile_x86 clones the caller's inputs only when the compiled code writes into one,
and never lets the compiled code write into the caller's tensors."""

from __future__ import annotations

import pytest
import support.x86_models as M
import torch
from torch.profiler import ProfilerActivity, profile

from lowering import compile_x86
from lowering.x86_inductor import written_inputs
from pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

CFG = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())


def quantized(name: str) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    model, args = getattr(M, name)().eval(), M.example_inputs(name)
    prepared = prepare_pt2e(torch.export.export(model, args).module(),
                            X86InductorQuantizer().set_global(CFG))
    prepared(*args)
    return convert_pt2e(prepared), args


class MutatesInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return x + 1.0


class ReadsInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def _clones(compiled, x: torch.Tensor) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        compiled(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::clone")


@pytest.mark.parametrize("model, written", [
    pytest.param(MutatesInput(), True, id="mutates-input"),
    pytest.param(ReadsInput(), False, id="reads-input"),
])
def test_inputs_are_cloned_only_when_the_code_writes_into_them(model, written):
    x = torch.randn(4, 8)
    before = x.clone()
    compiled = compile_x86(model, (x,))
    assert bool(compiled.inputs_written) is written, compiled.code
    assert compiled.clones_inputs is written
    assert _clones(compiled, x) == (1 if written else 0)
    assert torch.equal(x, before)  # the caller's tensor is never written
    assert torch.allclose(compiled(x), before * 2.0 + 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, written", [
    pytest.param("LinearAdd", True, id="linear-sum-into-input"),  # x + qlinear(x): in-place sum
    pytest.param("MLP", False, id="mlp"),
])
def test_int8_sum_post_op_into_an_input_is_detected_and_the_caller_protected(name, written):
    converted, args = quantized(name)
    (x,) = args
    before = x.clone()
    compiled = compile_x86(converted, args)
    assert bool(compiled.inputs_written) is written, compiled.code
    for _ in range(2):
        out = compiled(x)
        assert torch.equal(x, before)
    assert torch.allclose(out, converted(before), atol=1e-2)
    assert _clones(compiled, x) == (1 if written else 0)


def test_protect_inputs_true_and_false_override_the_detection():
    x = torch.randn(4, 8)
    always = compile_x86(ReadsInput(), (x,), protect_inputs=True)
    never = compile_x86(ReadsInput(), (x,), protect_inputs=False)
    assert (always.clones_inputs, never.clones_inputs) == (True, False)
    assert (_clones(always, x), _clones(never, x)) == (1, 0)


@pytest.mark.parametrize("line, written", [
    pytest.param("    cpp_k(arg0_1, buf0)", [], id="const-slot-read"),
    pytest.param("    cpp_k(buf0, arg0_1)", ["arg0_1"], id="non-const-slot-written"),
    pytest.param("    cpp_k(buf0, reinterpret_tensor(arg0_1, (16,), (1,), 0))", ["arg0_1"], id="view-written"),
    pytest.param("    buf1 = reinterpret_tensor(arg0_1, (16,), (1,), 0)\n    cpp_k(buf0, buf1)", ["arg0_1"],
                 id="alias-written"),
    pytest.param("    extern_kernels.mm(buf0, buf0, out=arg0_1)", ["arg0_1"], id="out="),
    pytest.param("    arg0_1.copy_(buf0)", ["arg0_1"], id="copy_"),
    pytest.param("    torch.ops.onednn.qconv2d_pointwise.binary_tensor(buf0, arg0_1, 'sum')", ["arg0_1"],
                 id="sum-post-op"),
    pytest.param("    buf2 = torch.ops.onednn.qlinear_pointwise.tensor(arg0_1, s, z, 'none')", [],
                 id="extern-read"),
])
def test_written_inputs_reads_the_wrapper_code(line, written):
    code = "\n".join([
        "cpp_k = async_compile.cpp_pybinding(['const float*', 'float*'], '')",
        "def call(self, args):",
        "    arg0_1, = args",
        line,
        "    return (buf0, )",
        "def get_args():",
        "    arg0_1 = rand_strided((16,), (1,), device='cpu', dtype=torch.float32)",
    ])
    assert written_inputs(code) == written
