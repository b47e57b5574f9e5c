"""Run calibration data through a prepared model, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["calibrate"]


def calibrate(
    model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    progress: bool = True,
    desc: str = "calibrating",
) -> int:
    """Feed every batch to ``model`` under ``torch.no_grad()``; return the batch count.

    A batch is a tensor, or a tuple/list of positional arguments. With ``progress``
    a tqdm bar is shown when tqdm is installed (it is optional).

    >>> import torch
    >>> calibrate(torch.nn.Linear(3, 2), [torch.randn(4, 3) for _ in range(5)], progress=False)
    5
    """
    iterator: Iterable[Any] = batches
    if progress:
        try:
            from tqdm.auto import tqdm

            total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
            # explicit disable=False: progress=True wins over a TQDM_DISABLE environment
            iterator = tqdm(batches, desc=desc, total=total, unit="batch", disable=False)
        except ImportError:  # tqdm is an optional dependency
            pass
    count = 0
    with torch.no_grad():
        for batch in iterator:
            args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
            model(*args)
            count += 1
    return count
