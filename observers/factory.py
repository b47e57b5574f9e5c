"""Constructor factories: ``Observer.with_args(...)`` and ``with_callable_args(...)``.

A quantization spec stores an *observer constructor*, not an observer, because
``prepare_pt2e`` needs a fresh instance per edge. ``with_args`` binds keyword
arguments into a :class:`PartialWrapper`; each call builds a new instance.

>>> from observers import MinMaxObserver
>>> import torch
>>> make = MinMaxObserver.with_args(dtype=torch.qint8).with_args(qscheme=torch.per_tensor_symmetric)
>>> a, b = make(), make()
>>> a is b, a.dtype, a.qscheme
(False, torch.qint8, torch.per_tensor_symmetric)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["PartialWrapper", "with_args", "with_callable_args"]


class PartialWrapper:
    """A constructor with bound keyword arguments, some of them computed at each call.

    ``p`` is the underlying :func:`functools.partial` (code that inspects a
    constructor reads ``ctr.p.keywords``, as with torchao). ``callable_args``
    maps argument names to zero-argument callables evaluated on every call, so
    each instance gets its own value; explicit keywords at call time win.

    >>> import itertools
    >>> counter = itertools.count()
    >>> make = PartialWrapper(functools.partial(dict, a=1)).with_callable_args(b=lambda: next(counter))
    >>> make(), make(), make(b=-1)
    ({'a': 1, 'b': 0}, {'a': 1, 'b': 1}, {'a': 1, 'b': -1})
    """

    def __init__(self, p: functools.partial[Any]) -> None:
        self.p = p
        self.callable_args: dict[str, Callable[[], Any]] = {}

    def __call__(self, *args: Any, **keywords: Any) -> Any:
        for name, make_value in self.callable_args.items():
            if name not in keywords:
                keywords[name] = make_value()
        return self.p(*args, **keywords)

    def __repr__(self) -> str:
        return f"{self.p!r}{self.callable_args!r}"

    def with_args(self, **kwargs: Any) -> PartialWrapper:
        """Bind more keyword arguments (later bindings override earlier ones)."""
        return with_args(self, **kwargs)

    def with_callable_args(self, **kwargs: Callable[[], Any]) -> PartialWrapper:
        """Bind keyword arguments whose values are produced by calling the given functions."""
        result = PartialWrapper(self.p)
        result.callable_args = {**self.callable_args, **kwargs}
        return result


def with_args(cls_or_self: Callable[..., Any], **kwargs: Any) -> PartialWrapper:
    """Wrap ``cls_or_self`` with bound keyword arguments.

    >>> make = with_args(dict, a=3).with_args(b=4)
    >>> make()
    {'a': 3, 'b': 4}
    """
    return PartialWrapper(functools.partial(cls_or_self, **kwargs))


def with_callable_args(
    cls_or_self: Callable[..., Any], **kwargs: Callable[[], Any]
) -> PartialWrapper:
    """Wrap ``cls_or_self`` with keyword arguments computed at construction time.

    >>> make = with_callable_args(dict, fresh=list)
    >>> make()["fresh"] is make()["fresh"]
    False
    """
    return PartialWrapper(functools.partial(cls_or_self)).with_callable_args(**kwargs)
