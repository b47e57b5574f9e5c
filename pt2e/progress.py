"""Progress for long calls: a tqdm bar on a terminal, nothing elsewhere.

Calibration, :func:`~pt2e.recipe.quantize_with_recipe` and
:func:`~pt2e.fallback.accuracy_aware_fallback` can take minutes. Each draws one bar on
standard error when it is a terminal and tqdm (an optional dependency) is installed. In
a log file or CI a redrawn bar would flood the output, so nothing is drawn there; the
recipe and the fallback also log each step at INFO level (``logging``), which a script
can turn on with ``logging.basicConfig(level=logging.INFO)``.

>>> with Progress("recipe", total=2, unit="step", enabled=False) as bar:
...     bar.advance("default flow: 12.3 dB")
...     bar.advance("SmoothQuant (alpha 0.5): 13.1 dB")
>>> bar.count, bar.note
(2, 'SmoothQuant (alpha 0.5): 13.1 dB')
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any

__all__ = ["Progress", "is_terminal", "iterate"]


def is_terminal() -> bool:
    """Whether standard error is a terminal (where a redrawn bar belongs)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def _tqdm(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar, or ``None`` when ``enabled`` is False, stderr is no terminal or tqdm is missing."""
    if not enabled or not is_terminal():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    # explicit disable=False: enabled=True wins over a TQDM_DISABLE environment
    return tqdm(disable=False, **kwargs)


def iterate(items: Iterable[Any], *, desc: str, unit: str, enabled: bool = True) -> Iterable[Any]:
    """``items``, drawn as a bar while they are consumed (see the module docstring).

    >>> list(iterate([1, 2, 3], desc="calibrating", unit="batch", enabled=False))
    [1, 2, 3]
    """
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    bar = _tqdm(enabled, iterable=items, desc=desc, total=total, unit=unit)
    return items if bar is None else bar


class Progress:
    """A bar advanced by hand, one step at a time, showing the last step's ``note``.

    ``total`` is the number of steps when known (``None`` draws a counter). Use it as a
    context manager so the bar is closed on errors too. Example: see the module docstring.
    """

    def __init__(self, desc: str, *, total: int | None = None, unit: str = "step", enabled: bool = True) -> None:
        self.count, self.note = 0, ""
        self._bar = _tqdm(enabled, desc=desc, total=total, unit=unit)

    def advance(self, note: str = "") -> None:
        """One more step done; ``note`` says what it was (shown beside the bar)."""
        self.count += 1
        self.note = note
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
