"""Run several quantizers one after another on the same graph."""

from __future__ import annotations

from typing import Any

import torch

from .base import Quantizer

__all__ = ["ComposableQuantizer"]


class ComposableQuantizer(Quantizer):
    """Apply ``quantizers`` in order; an earlier quantizer's claim on a node wins.

    Each quantizer skips nodes already marked annotated, so order is priority:
    put the most specific quantizer (e.g. an embedding quantizer) first.

    >>> from pt2e.quantizer import Quantizer
    >>> class Nop(Quantizer):
    ...     def annotate(self, model): return model
    ...     def validate(self, model): pass
    >>> len(ComposableQuantizer([Nop(), Nop()]).quantizers)
    2
    """

    def __init__(self, quantizers: list[Quantizer]):
        super().__init__()
        self.quantizers = list(quantizers)

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for q in self.quantizers:
            model = q.transform_for_annotation(model)
        return model

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for q in self.quantizers:
            q.annotate(model)
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        for q in self.quantizers:
            q.validate(model)

    def prepare_obs_or_fq_callback(
        self, model: torch.fx.GraphModule, edge_or_node_to_obs_or_fq: dict[Any, Any]
    ) -> None:
        for q in self.quantizers:
            q.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)
