"""The project's error hierarchy.

Every error the project raises on purpose derives from :class:`Pt2eError`, so a
caller can catch "anything this library complained about" in one place. Each
subclass also derives from the builtin exception that describes it, so code
written against torchao (which raises ``ValueError``/``RuntimeError`` or bare
asserts) keeps working when it catches the builtin.

>>> from observers.errors import Pt2eError, QuantizationConfigError
>>> issubclass(QuantizationConfigError, ValueError)
True
>>> try:
...     raise QuantizationConfigError("qscheme=... is not supported")
... except Pt2eError as e:
...     print(type(e).__name__)
QuantizationConfigError
"""

from __future__ import annotations

__all__ = ["ObserverStateError", "Pt2eError", "QuantizationConfigError"]


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
