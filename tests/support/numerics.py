"""Numeric helpers for tests."""

from __future__ import annotations

import torch


def sqnr(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of ``actual`` against ``reference``."""
    reference = reference.detach().float()
    noise = (reference - actual.detach().float()).pow(2).mean()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def count_targets(gm: torch.fx.GraphModule) -> dict[str, int]:
    """``{"quantize_per_tensor.default": 3, ...}`` for the call_function nodes of ``gm``."""
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            counts[name] = counts.get(name, 0) + 1
    return counts


def op_sequence(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the call_function targets of ``gm`` in graph order."""
    return [getattr(n.target, "__name__", str(n.target))
            for n in gm.graph.nodes if n.op == "call_function"]
