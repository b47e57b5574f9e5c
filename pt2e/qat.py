"""Conv + batch norm during quantization-aware training (placeholder until issue #5)."""

from __future__ import annotations

from torch.fx import GraphModule

__all__ = ["simulate_qat_conv_bn", "fold_qat_conv_bn"]


def simulate_qat_conv_bn(model: GraphModule) -> int:
    """Rewrite conv + train-mode batch norm so the folded weight is fake-quantized."""
    return 0


def fold_qat_conv_bn(model: GraphModule) -> int:
    """Fold the batch norms :func:`simulate_qat_conv_bn` kept alive into their convs."""
    return 0
