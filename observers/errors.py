"""The project's error hierarchy (public home: :mod:`pt2e.errors`).

Every error the project raises on purpose derives from :class:`Pt2eError`, so a
caller can catch "anything this library complained about" in one place. Each
subclass also derives from the builtin exception that describes it, so code
written against torchao (which raises ``ValueError``/``RuntimeError`` or bare
asserts) keeps working when it catches the builtin.

The classes are defined here because ``observers`` is the lowest layer and raises
them too, but users meet them as ``pt2e.errors.*``: each class says so in its
``__module__``, which is what tracebacks, ``repr`` and pickle use.

>>> from pt2e.errors import Pt2eError, QuantizationConfigError
>>> issubclass(QuantizationConfigError, ValueError)
True
>>> try:
...     raise QuantizationConfigError("qscheme=... is not supported")
... except Pt2eError as e:
...     print(repr(e))
QuantizationConfigError('qscheme=... is not supported')
>>> QuantizationConfigError
<class 'pt2e.errors.QuantizationConfigError'>
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "ArgumentValueError",
    "ObserverStateError",
    "Pt2eError",
    "QuantizationConfigError",
    "UnsupportedOperationError",
]

# Users import these from pt2e.errors, and a traceback, a repr of the class or a
# pickled error should name that module, not where the class happens to be defined.
PUBLIC_MODULE = "pt2e.errors"


class Pt2eError(Exception):
    """Base class of every error raised deliberately by this project."""


class QuantizationConfigError(Pt2eError, ValueError):
    """A quantization setting (dtype, qscheme, quant range, ...) is invalid.

    The message names the argument, the value it received and the values it
    accepts.
    """


class ObserverStateError(Pt2eError, RuntimeError):
    """An observer or fake-quantize module is in a state that cannot answer.

    Typically ``calculate_qparams()`` was called before any finite data was
    observed, i.e. calibration data was never run through the prepared model.
    """


class ArgumentTypeError(Pt2eError, TypeError):
    """An argument of a public function has the wrong type.

    For example ``convert_pt2e(model, fold_quantize="yes")`` or
    ``prepare_pt2e(model, object())``.
    """


class ArgumentValueError(Pt2eError, ValueError):
    """An argument has the right type but a value the function cannot take.

    For quantization settings (dtype, qscheme, range) the more specific
    :class:`QuantizationConfigError` is raised instead.
    """


class UnsupportedOperationError(Pt2eError, NotImplementedError):
    """The object cannot do what was asked (e.g. an observer without a range to reset)."""


for _cls in (Pt2eError, QuantizationConfigError, ObserverStateError, ArgumentTypeError,
             ArgumentValueError, UnsupportedOperationError):
    _cls.__module__ = PUBLIC_MODULE
del _cls
