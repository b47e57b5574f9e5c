"""The eager ``quantize_`` API: structure, repr, filter_fn, configs, .to(dtype), kernel choice."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantizers
import quantizers.eager as eager
from observers.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    QuantizationConfigError,
    UnsupportedOperationError,
)
from quantizers.eager import (
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    PerGroup,
    PerRow,
    quantize_,
    select_kernel,
)
from quantizers.eager.kernels import KERNELS, candidates, int_mm_is_exact

CONFIGS = [
    pytest.param(Int4WeightOnlyConfig(group_size=32), id="int4"),
    pytest.param(Int8WeightOnlyConfig(), id="int8_weight_only"),
    pytest.param(Int8DynamicActivationInt8WeightConfig(), id="int8_dynamic"),
]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(32, 32, bias=False))
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)

    def forward(self, x):
        h = self.block(self.act(self.fc1(x)))
        return self.attn(h, h, h, need_weights=False)[0]


def test_public_names_are_the_same_objects_in_quantizers():
    # quantizers.eager.__all__ itself is pinned in tests/test_public_api.py
    for name in ("quantize_", "Int4WeightOnlyConfig", "Int8WeightOnlyConfig",
                 "Int8DynamicActivationInt8WeightConfig"):
        assert getattr(quantizers, name) is getattr(eager, name)
        assert name in quantizers.__all__


@pytest.mark.parametrize("config", CONFIGS)
def test_linear_stays_linear_and_reads_well(config):
    model = Net().eval()
    quantize_(model, config)
    assert type(model.fc1) is nn.Linear and isinstance(model.fc1.weight, nn.Parameter)
    assert isinstance(model.fc1.weight, eager.QuantizedLinearWeight)
    assert not model.fc1.weight.requires_grad
    text = repr(model.fc1)
    assert text.startswith("Linear(in_features=64, out_features=32, bias=True, weight=Int")
    assert "shape=(32, 64)" in text and "dtype=torch.float32" in text and "layout=" in text
    # the attention's out_proj (NonDynamicallyQuantizableLinear) is read directly by MHA: left float
    assert type(model.attn.out_proj.weight) is nn.Parameter
    assert model(torch.randn(2, 5, 64)).shape == (2, 5, 32)


def test_int4_repr_names_dtype_group_size_shape_layout():
    m = nn.Sequential(nn.Linear(128, 64)).to(torch.bfloat16)
    quantize_(m, Int4WeightOnlyConfig(group_size=64))
    text = repr(m[0].weight)
    for part in ("Int4WeightTensor(", "shape=(64, 128)", "dtype=torch.bfloat16", "group_size=64",
                 f"layout=tinygemm_cpu[{torch.backends.cpu.get_cpu_capability()}]", "kernel=int4_tinygemm_cpu"):
        assert part in text


def test_filter_fn_gets_module_and_fqn():
    model = Net()
    seen = []

    def only_block(module, fqn):
        seen.append(fqn)
        return isinstance(module, nn.Linear) and fqn.startswith("block.")

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=only_block)
    assert {"", "fc1", "block", "block.0", "attn"} <= set(seen)
    assert isinstance(model.block[0].weight, eager.Int8WeightTensor)
    assert type(model.fc1.weight) is nn.Parameter


def test_filter_fn_selecting_a_non_linear_is_an_error():
    with pytest.raises(ArgumentTypeError, match=r"selected act \(ReLU\)"):
        quantize_(Net(), Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in ("fc1", "act"))


def test_quantize_twice_leaves_quantized_weights_alone():
    model = Net()
    quantize_(model, Int8WeightOnlyConfig())
    weight = model.fc1.weight
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert model.fc1.weight is weight


@pytest.mark.parametrize("config", [object(), None])
def test_unknown_config_is_a_type_error(config):
    with pytest.raises(ArgumentTypeError, match="pass one of quantizers.eager's"):
        quantize_(Net(), config)


def test_device_without_kernels_is_refused():
    with pytest.raises(UnsupportedOperationError, match="allowed: 'cpu'"):
        quantize_(Net(), Int8WeightOnlyConfig(), device="meta")


@pytest.mark.parametrize("make,match", [
    (lambda: Int4WeightOnlyConfig(group_size=16), "group_size=16"),
    (lambda: Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d"), "GPU layout"),
    (lambda: Int4WeightOnlyConfig(int4_choose_qparams_algorithm="hqq"), "not implemented"),
    (lambda: Int4WeightOnlyConfig(int4_tile_packed_ntile=4), "int4_tile_packed_ntile=4"),
    (lambda: Int4WeightOnlyConfig(version=1), "version=1"),
    (lambda: Int8WeightOnlyConfig(group_size=32), "PerGroup"),
    (lambda: Int8WeightOnlyConfig(granularity=PerGroup(64)), "no CPU kernel"),
    (lambda: Int8WeightOnlyConfig(granularity=PerRow(dim=0)), "PerRow\\(dim=0\\)"),
    (lambda: Int8DynamicActivationInt8WeightConfig(act_mapping_type="SYMMETRIC_NO_CLIPPING_ERR"),
     "act_mapping_type"),
    (lambda: Int8DynamicActivationInt8WeightConfig(weight_only_decode=True), "weight_only_decode"),
    (lambda: Int8DynamicActivationInt8WeightConfig(granularity=[PerRow()]), "list of two"),
    (lambda: Int8DynamicActivationInt8WeightConfig(granularity=PerGroup(32)), "PerGroup"),
])
def test_options_that_cannot_be_honoured_say_so(make, match):
    with pytest.raises(QuantizationConfigError, match=match):
        make()


def test_granularity_of_the_wrong_type_is_a_type_error():
    with pytest.raises(ArgumentTypeError, match="not a granularity"):
        Int8WeightOnlyConfig(granularity="per_row")


@pytest.mark.parametrize("config", CONFIGS)
@torch.no_grad()
def test_to_dtype_rechooses_the_kernel(config):
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, config)
    x = torch.randn(3, 64)
    y32 = model(x)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        model.to(dtype)
        w = model[0].weight
        assert w.dtype == dtype and dtype in w._kernel().activation_dtypes
        y = model(x.to(dtype))
        assert y.dtype == dtype
        assert float((y.float() - y32).abs().max()) <= 0.05 * float(y32.abs().max())


def test_to_another_device_or_integer_dtype_is_refused():
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, Int8WeightOnlyConfig())
    with pytest.raises(UnsupportedOperationError, match="run on cpu only"):
        model[0].weight.to("meta")
    with pytest.raises(UnsupportedOperationError, match="keeps a float dtype"):
        model[0].weight.to(torch.int8)


def test_input_dtype_mismatch_is_a_clear_error():
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    with pytest.raises(ArgumentValueError, match=r"call model.to\(torch.bfloat16\)"):
        model(torch.randn(1, 64, dtype=torch.bfloat16))


def test_other_ops_on_a_quantized_weight_are_refused_by_name():
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, Int8WeightOnlyConfig())
    with pytest.raises(UnsupportedOperationError, match=r"aten.add.Tensor.*dequantize\(\)"):
        model[0].weight + 1


@pytest.mark.parametrize("config", CONFIGS)
def test_deepcopy_is_independent_and_equal(config):
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, config)
    twin = copy.deepcopy(model)
    x = torch.randn(2, 64)
    assert torch.equal(model(x), twin(x))
    first = model[0].weight.tensor_fields[0]
    assert getattr(twin[0].weight, first).data_ptr() != getattr(model[0].weight, first).data_ptr()
    assert "weight=Int" in repr(twin[0])


# -- kernel choice -------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int4_weight_only", "int8_weight_only"])
def test_fp32_and_fp16_weight_only_models_run_the_kernel_in_bf16(scheme):
    for dtype in (torch.float32, torch.float16):
        assert select_kernel(scheme, "cpu", dtype).compute_dtype == torch.bfloat16
    assert select_kernel(scheme, "cpu", torch.bfloat16).compute_dtype == torch.bfloat16


def test_int_mm_is_chosen_only_where_it_is_exact():
    chosen = select_kernel("int8_dynamic", "cpu", torch.float32).name
    assert chosen == ("int8_dynamic_cpu_int_mm" if int_mm_is_exact() else "int8_dynamic_cpu_via_bf16")


def test_kernel_table_is_consistent():
    names = [k.name for k in KERNELS]
    assert len(names) == len(set(names))
    for k in KERNELS:
        for dtype in k.activation_dtypes:
            assert k in candidates(k.scheme, k.device, dtype) or not k.usable()
    with pytest.raises(UnsupportedOperationError, match="no kernel for activations"):
        select_kernel("int8_weight_only", "cpu", torch.float64)
