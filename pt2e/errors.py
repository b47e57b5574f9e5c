"""The project's errors, as users see them: ``pt2e.errors.*``.

One tree, one base class, :class:`Pt2eError`. Every subclass also inherits the
builtin exception it is, so ``except ValueError`` written against torchao still
catches a :class:`QuantizationConfigError`. The classes ``observers`` raises are
defined in :mod:`observers.errors` (the lowest layer) and re-exported here, their
public home; the pipeline's own are defined here. Messages say what happened,
where (node name, module path) and how to fix it.

>>> import pt2e.errors as E
>>> all(issubclass(getattr(E, name), E.Pt2eError) for name in E.__all__)
True
>>> issubclass(E.ArgumentTypeError, TypeError), E.ArgumentTypeError.__module__
(True, 'pt2e.errors')
"""

from __future__ import annotations

from observers.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    ObserverStateError,
    Pt2eError,
    QuantizationConfigError,
    UnsupportedOperationError,
)

__all__ = [
    "Pt2eError",
    "QuantizationConfigError",
    "ObserverStateError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "UnsupportedOperationError",
    "AnnotationError",
    "AnnotationConflictError",
    "NotExportedModelError",
    "PipelineStateError",
    "ExportedTrainEvalError",
]


class AnnotationError(Pt2eError, ValueError):
    """A quantizer wrote an annotation that cannot be honoured (bad edge, conflicting specs)."""


class AnnotationConflictError(AnnotationError, RuntimeError):
    """A quantizer in a ``ComposableQuantizer`` changed or removed an earlier one's annotation.

    Also a ``RuntimeError``, which is what torchao's ``ComposableQuantizer`` raises.

    >>> issubclass(AnnotationConflictError, RuntimeError), issubclass(AnnotationConflictError, ValueError)
    (True, True)
    """


class NotExportedModelError(Pt2eError, TypeError):
    """The model is not the ``GraphModule`` that ``torch.export.export(...).module()`` returns."""


class PipelineStateError(Pt2eError, RuntimeError):
    """A pipeline step was called out of order (prepare twice, convert before prepare...)."""


class ExportedTrainEvalError(PipelineStateError, UnsupportedOperationError):
    """``.train()`` / ``.eval()`` was called on an exported (prepared or converted) model.

    Also a ``NotImplementedError`` (through :class:`UnsupportedOperationError`),
    which is what torchao raises there, so ``except NotImplementedError`` keeps working.

    >>> issubclass(ExportedTrainEvalError, NotImplementedError)
    True
    """
