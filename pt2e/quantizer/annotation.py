"""The one home of the annotation key and its accessors.

A quantizer records its decisions in ``node.meta["quantization_annotation"]``.
Everything in this project reads and writes that entry through these functions,
and reads it by field (``input_qspec_map``, ``output_qspec``,
``allow_implicit_sharing``, ``_annotated``), so annotations made with torchao's
``QuantizationAnnotation`` class work unchanged.

>>> import torch
>>> from observers import MinMaxObserver
>>> from pt2e.quantizer.spec import QuantizationSpec
>>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
>>> x, relu = list(gm.graph.nodes)[:2]
>>> spec = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
...                         observer_or_fake_quant_ctr=MinMaxObserver)
>>> annotate_input_qspec_map(relu, x, spec)
>>> annotate_output_qspec(relu, spec)
>>> mark_annotated([relu])
>>> is_annotated(relu), get_annotation(relu).output_qspec is spec
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.fx import Node

from ..errors import AnnotationError
from .spec import QuantizationAnnotation, QuantizationSpecBase

__all__ = [
    "Q_ANNOTATION_KEY",
    "get_annotation",
    "get_or_create_annotation",
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "mark_annotated",
    "is_annotated",
    "any_annotated",
    "is_valid_annotation",
    "clear_annotation",
]

Q_ANNOTATION_KEY = "quantization_annotation"


def get_annotation(node: Node) -> Any | None:
    """The node's annotation (ours or any object with the same fields), or ``None``.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> get_annotation(relu) is None
    True
    """
    return node.meta.get(Q_ANNOTATION_KEY)


def get_or_create_annotation(node: Node) -> Any:
    """The node's annotation, creating an empty :class:`QuantizationAnnotation` if needed."""
    ann = node.meta.get(Q_ANNOTATION_KEY)
    if ann is None:
        ann = QuantizationAnnotation()
        node.meta[Q_ANNOTATION_KEY] = ann
    if getattr(ann, "input_qspec_map", None) is None:
        ann.input_qspec_map = {}
    return ann


def _check_no_conflict(node: Node, what: str, old: Any, new: Any) -> None:
    if old is None or new is None or old == new or not is_annotated(node):
        return
    raise AnnotationError(
        f"conflicting specs on the {what} of node '{node.name}': it was already annotated "
        f"(and marked annotated) with {old}, and is now being given {new}. Two patterns or "
        "quantizers claim the same edge; skip nodes for which is_annotated(node) is True, "
        "or order the patterns so the intended one runs first"
    )


def annotate_input_qspec_map(
    node: Node, input_node: Node, qspec: QuantizationSpecBase | None
) -> None:
    """Quantize the edge ``input_node -> node`` with ``qspec`` (same signature as torchao).

    Raises :class:`~pt2e.errors.AnnotationError` if a node already marked annotated
    gets a different spec for the same edge (two patterns claiming one edge).

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> annotate_input_qspec_map(relu, x, None)
    >>> list(get_annotation(relu).input_qspec_map) == [x]
    True
    """
    qmap = get_or_create_annotation(node).input_qspec_map
    _check_no_conflict(node, f"input edge '{input_node.name}'", qmap.get(input_node), qspec)
    qmap[input_node] = qspec


def annotate_output_qspec(node: Node, qspec: QuantizationSpecBase | None) -> None:
    """Quantize ``node``'s output with ``qspec`` (same signature as torchao).

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> annotate_output_qspec(relu, None)
    >>> get_annotation(relu).output_qspec is None
    True
    """
    ann = get_or_create_annotation(node)
    _check_no_conflict(node, "output", ann.output_qspec, qspec)
    ann.output_qspec = qspec


def mark_annotated(nodes: Iterable[Node]) -> None:
    """Mark nodes as claimed so later patterns of the same quantizer leave them alone.

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> mark_annotated([relu])
    >>> is_annotated(relu), is_annotated(x), any_annotated([x, relu])
    (True, False, True)
    """
    for n in nodes:
        get_or_create_annotation(n)._annotated = True


def is_annotated(node: Node) -> bool:
    """Whether a quantizer has already claimed ``node`` (example: :func:`mark_annotated`)."""
    ann = node.meta.get(Q_ANNOTATION_KEY)
    return bool(ann is not None and getattr(ann, "_annotated", False))


def any_annotated(nodes: Iterable[Node]) -> bool:
    """Whether any of ``nodes`` is already claimed (example: :func:`mark_annotated`)."""
    return any(is_annotated(n) for n in nodes)


def is_valid_annotation(annotation: Any) -> bool:
    """Whether ``annotation`` quantizes something: it exists and has an input edge
    or an output spec (torchao's name and rule; read by field, any class).

    A node merely claimed (``mark_annotated`` with nothing quantized) has no valid
    annotation.

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> from pt2e.quantizer.spec import QuantizationSpec
    >>> spec = QuantizationSpec(dtype=torch.uint8, observer_or_fake_quant_ctr=MinMaxObserver)
    >>> is_valid_annotation(None), is_valid_annotation(QuantizationAnnotation(_annotated=True))
    (False, False)
    >>> is_valid_annotation(QuantizationAnnotation(output_qspec=spec))
    True
    """
    if annotation is None:
        return False
    qmap = getattr(annotation, "input_qspec_map", None) or {}
    return len(qmap) > 0 or getattr(annotation, "output_qspec", None) is not None


def clear_annotation(node: Node) -> None:
    """Remove ``node``'s annotation, e.g. to undo a pattern before another quantizer runs.

    Nothing in the pipeline calls it: annotations stay on the nodes after
    ``prepare_pt2e``, because ``convert_pt2e`` reads them (each annotated consumer
    of a shared dequantize gets its own copy).

    >>> import torch
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> relu = list(gm.graph.nodes)[1]
    >>> mark_annotated([relu])
    >>> clear_annotation(relu)
    >>> is_annotated(relu), get_annotation(relu) is None
    (False, True)
    """
    node.meta.pop(Q_ANNOTATION_KEY, None)
