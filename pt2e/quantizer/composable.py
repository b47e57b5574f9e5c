"""Run several quantizers one after another on the same graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Node

from ..errors import AnnotationConflictError
from ..graph import module_path
from .annotation import get_annotation
from .base import Quantizer

__all__ = ["ComposableQuantizer"]


@dataclass(frozen=True, kw_only=True)
class _Snapshot:
    """What one node's annotation said after the quantizer that wrote it."""

    annotation: Any
    author: str
    inputs: tuple[tuple[Node, Any], ...]
    output: Any


def _snapshot(annotation: Any, author: str) -> _Snapshot:
    qmap = getattr(annotation, "input_qspec_map", None) or {}
    return _Snapshot(annotation=annotation, author=author, inputs=tuple(qmap.items()),
                     output=getattr(annotation, "output_qspec", None))


def _change(before: _Snapshot, annotation: Any) -> str | None:
    """How ``annotation`` differs from ``before`` (``None``: only new edges were added)."""
    if annotation is None:
        return "removed"
    if annotation is not before.annotation:
        return "replaced"
    qmap = getattr(annotation, "input_qspec_map", None) or {}
    for edge, spec in before.inputs:
        if edge not in qmap:
            return f"removed the spec of input edge '{edge.name}'"
        if qmap[edge] is not spec:
            return f"overwrote the spec of input edge '{edge.name}'"
    if before.output is not None and getattr(annotation, "output_qspec", None) is not before.output:
        return "overwrote the output spec"
    return None


class ComposableQuantizer(Quantizer):
    """Apply ``quantizers`` in order; an earlier quantizer's claim on a node wins.

    Each quantizer skips nodes already marked annotated, so order is priority:
    put the most specific quantizer (e.g. an embedding quantizer) first. A node a
    quantizer leaves float (no pattern, or a ``None`` config) carries no annotation
    and stays free for the next one. As in torchao, a quantizer that replaces,
    overwrites or removes an earlier quantizer's annotation raises
    :class:`~pt2e.errors.AnnotationConflictError` (also a ``RuntimeError``);
    adding an edge to an annotation is allowed.

    >>> import torch
    >>> from pt2e.quantizer import QuantizationAnnotation, Quantizer
    >>> class Claim(Quantizer):
    ...     def annotate(self, model):
    ...         for n in model.graph.nodes:
    ...             if n.op == "call_function":
    ...                 n.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
    ...         return model
    ...     def validate(self, model): pass
    >>> gm = torch.export.export(torch.nn.ReLU(), (torch.randn(2),)).module()
    >>> ComposableQuantizer([Claim(), Claim()]).annotate(gm)
    Traceback (most recent call last):
    ...
    pt2e.errors.AnnotationConflictError: Claim (quantizer 2 of 2) replaced the annotation that Claim (quantizer 1) wrote on node 'relu' (module ''); a later quantizer must skip nodes for which pt2e.quantizer.is_annotated(node) is True, or reorder the quantizers
    """

    def __init__(self, quantizers: list[Quantizer]):
        super().__init__()
        self.quantizers = list(quantizers)

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for q in self.quantizers:
            model = q.transform_for_annotation(model)
        return model

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        seen: dict[Node, _Snapshot] = {}
        for i, q in enumerate(self.quantizers, start=1):
            q.annotate(model)
            who = f"{type(q).__name__} (quantizer {i} of {len(self.quantizers)})"
            for node in model.graph.nodes:
                annotation = get_annotation(node)
                before = seen.get(node)
                if before is not None and (change := _change(before, annotation)) is not None:
                    raise AnnotationConflictError(
                        f"{who} {change} {'in ' if 'edge' in change or 'output' in change else ''}"
                        f"the annotation that {before.author} wrote on node '{node.name}' "
                        f"(module '{module_path(node)}'); a later quantizer must skip nodes for which "
                        "pt2e.quantizer.is_annotated(node) is True, or reorder the quantizers"
                    )
                if annotation is not None:
                    author = before.author if before is not None else f"{type(q).__name__} (quantizer {i})"
                    seen[node] = _snapshot(annotation, author)
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        for q in self.quantizers:
            q.validate(model)

    def prepare_obs_or_fq_callback(
        self, model: torch.fx.GraphModule, edge_or_node_to_obs_or_fq: dict[Any, Any]
    ) -> None:
        for q in self.quantizers:
            q.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)
