"""Errors raised by the pt2e pipeline (prepare, convert, annotation checks).

All derive from :class:`observers.errors.Pt2eError`, the project's one base class.
Messages say what happened, where (node name, module path) and how to fix it.
"""

from __future__ import annotations

from observers.errors import ObserverStateError, Pt2eError, QuantizationConfigError

__all__ = [
    "Pt2eError",
    "QuantizationConfigError",
    "ObserverStateError",
    "AnnotationError",
    "NotExportedModelError",
    "PipelineStateError",
]


class AnnotationError(Pt2eError, ValueError):
    """A quantizer wrote an annotation that cannot be honoured (bad edge, conflicting specs)."""


class NotExportedModelError(Pt2eError, TypeError):
    """The model is not the ``GraphModule`` that ``torch.export.export(...).module()`` returns."""


class PipelineStateError(Pt2eError, RuntimeError):
    """A pipeline step was called out of order (prepare twice, convert before prepare...)."""
