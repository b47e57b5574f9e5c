"""The eager workflow: ``quantize_(model, config)`` swaps ``nn.Linear`` weights for quantized ones.

A second workflow beside PT2E, with torchao's ``quantize_`` API: no export, no
calibration; each linear's weight becomes a tensor subclass that runs a torch CPU
kernel (int4 weight-only, int8 weight-only, int8 dynamic activations). It shares
the qparams math of :mod:`observers` and nothing else. See ``docs/eager.md``.

>>> import torch
>>> from quantizers.eager import quantize_, Int4WeightOnlyConfig
>>> model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False)).eval().to(torch.bfloat16)
>>> quantize_(model, Int4WeightOnlyConfig(group_size=32))
>>> model[0]
Linear(in_features=128, out_features=64, bias=False, weight=Int4WeightTensor(shape=(64, 128), dtype=torch.bfloat16, group_size=32, layout=tinygemm_cpu[...], kernel=int4_tinygemm_cpu))
"""

from __future__ import annotations

from .api import quantize_, register_quantize_module_handler
from .configs import (
    Int4ChooseQParamsAlgorithm,
    Int4PackingFormat,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    MappingType,
    PerGroup,
    PerRow,
    PerTensor,
)
from .kernels import KERNELS, Kernel, select_kernel
from .tensors import (
    Int4WeightTensor,
    Int8DynamicWeightTensor,
    Int8WeightTensor,
    QuantizedLinearWeight,
)

__all__ = [
    "KERNELS",
    "Int4ChooseQParamsAlgorithm",
    "Int4PackingFormat",
    "Int4WeightOnlyConfig",
    "Int4WeightTensor",
    "Int8DynamicActivationInt8WeightConfig",
    "Int8DynamicWeightTensor",
    "Int8WeightOnlyConfig",
    "Int8WeightTensor",
    "Kernel",
    "MappingType",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "QuantizedLinearWeight",
    "quantize_",
    "register_quantize_module_handler",
    "select_kernel",
]
