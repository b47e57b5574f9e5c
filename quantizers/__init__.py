"""Backend quantizers and the annotator library they are built from.

>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
"""

from __future__ import annotations

from .x86_inductor import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_x86_inductor_linear_dynamic_fp16_config,
    x86_needs_reduce_range,
)

__all__ = [
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "x86_needs_reduce_range",
]

from .xnnpack import (  # noqa: E402
    XNNPACKQuantizer,
    XnnpackSkipWarning,
    get_symmetric_quantization_config,
)

__all__ += ["XNNPACKQuantizer", "XnnpackSkipWarning", "get_symmetric_quantization_config"]

from .xpu_inductor import XPUInductorQuantizer, get_default_xpu_inductor_quantization_config  # noqa: E402

__all__ += ["XPUInductorQuantizer", "get_default_xpu_inductor_quantization_config"]

from .eager import (  # noqa: E402
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)

__all__ += [
    "Int4WeightOnlyConfig",
    "Int8DynamicActivationInt8WeightConfig",
    "Int8WeightOnlyConfig",
    "quantize_",
]

from .openvino import OpenVINOQuantizer, QuantizationMode, get_openvino_quantization_config  # noqa: E402

__all__ += ["OpenVINOQuantizer", "QuantizationMode", "get_openvino_quantization_config"]

from .embedding import EmbeddingQuantizer, get_embedding_operators_config  # noqa: E402

__all__ += ["EmbeddingQuantizer", "get_embedding_operators_config"]
