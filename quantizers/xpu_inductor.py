"""XPUInductorQuantizer: int8 recipes that Inductor lowers to oneDNN kernels on Intel GPUs.

Same public API as ``torchao.quantization.pt2e.quantizer.XPUInductorQuantizer``.
XPU runs the x86 recipe through the same oneDNN library, so this is the x86
quantizer (same configuration methods and precedence) with its differences
stated as data, the ones torchao's XPU quantizer makes:

* the default config has signed int8 activations (``-128..127``, per-tensor
  affine, histogram observer); weights stay int8 per-channel symmetric;
* ``max_pool2d`` stays float: XPU has no int8 max pool kernel;
* conv rows do not chain through batch norm: XPU has no QAT conv+bn fusion.
  PTQ folds batch norm before annotation, so only QAT graphs see the difference
  (conv is quantized, batch norm and what follows it stay float).

>>> import torch
>>> from pt2e import convert_pt2e, prepare_pt2e
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).eval()
>>> x = torch.randn(1, 3, 8, 8)
>>> q = XPUInductorQuantizer().set_global(get_default_xpu_inductor_quantization_config())
>>> prepared = prepare_pt2e(torch.export.export(m, (x,)).module(), q)
>>> _ = prepared(x)
>>> [n.args[-1] for n in convert_pt2e(prepared).graph.nodes   # one int8 q for the conv input
...  if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
[torch.int8]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import torch

from pt2e.quantizer import QuantizationConfig, QuantizationSpec

from .patterns import Pattern
from .x86_inductor import (
    X86_PATTERNS,
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

__all__ = [
    "XPUInductorQuantizer",
    "get_default_xpu_inductor_quantization_config",
    "XPU_PATTERNS",
]

# ops XPU has no int8 kernel for: no row anchors at them
_XPU_FLOAT_OPS = frozenset({torch.ops.aten.max_pool2d.default})
# chain steps XPU does not fuse (QAT conv + batch norm)
_XPU_UNFUSED_STEPS = frozenset({"bn"})


@functools.lru_cache
def get_default_xpu_inductor_quantization_config() -> QuantizationConfig:
    """The x86 recipe with signed activations: int8 per-tensor affine, histogram observer.

    >>> cfg = get_default_xpu_inductor_quantization_config()
    >>> cfg.input_activation.dtype, cfg.input_activation.quant_min, cfg.weight.qscheme
    (torch.int8, -128, torch.per_channel_symmetric)
    """
    x86 = get_default_x86_inductor_quantization_config()
    x86_act = cast(QuantizationSpec, x86.input_activation)  # the x86 recipe always has one
    act = dataclasses.replace(x86_act, dtype=torch.int8, quant_min=-128, quant_max=127)
    return QuantizationConfig(act, act, x86.weight, None, False)


def _xpu_row(row: Pattern) -> Pattern | None:
    anchor = row.anchor - _XPU_FLOAT_OPS
    if not anchor:
        return None
    chain = tuple(step for step in row.chain if step.role not in _XPU_UNFUSED_STEPS)
    return dataclasses.replace(row, anchor=anchor, chain=chain)


XPU_PATTERNS = X86_PATTERNS.derive(_xpu_row)


class XPUInductorQuantizer(X86InductorQuantizer):
    """Annotate an exported model for int8 inference through Inductor on Intel GPUs (oneDNN).

    Only the pattern table differs from :class:`X86InductorQuantizer` (see the module doc).

    >>> q = XPUInductorQuantizer().set_global(get_default_xpu_inductor_quantization_config())
    >>> "int8_passthrough" in [p.name for p in q.patterns], q.global_config.input_activation.dtype
    (True, torch.int8)
    """

    patterns = XPU_PATTERNS
