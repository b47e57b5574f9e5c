"""Type aliases for "an observer or a fake quantize", and the derived-qparams observer.

``DerivedObserverOrFakeQuantize`` stands for an edge whose qparams are a
function of other edges' observers, e.g. a bias quantized with
``scale = input_scale * weight_scale``.

>>> import torch
>>> from observers import DerivedObserverOrFakeQuantize, MinMaxObserver
>>> act = MinMaxObserver()
>>> weight = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
...                         quant_min=-127, quant_max=127)
>>> _ = act(torch.tensor([0.0, 2.55])); _ = weight(torch.tensor([-1.27, 1.27]))
>>> def bias_qparams(obs_or_fqs):
...     (s_act, _), (s_w, _) = (o.calculate_qparams() for o in obs_or_fqs)
...     return s_act * s_w, torch.zeros_like(s_act, dtype=torch.int32)
>>> bias = DerivedObserverOrFakeQuantize(torch.int32, [act, weight], bias_qparams,
...     quant_min=-(2**31), quant_max=2**31 - 1, qscheme=torch.per_tensor_affine)
>>> round(bias.calculate_qparams()[0].item(), 8)
0.0001
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch

from observers.base import ObserverBase
from observers.factory import PartialWrapper
from observers.fake_quantize import FakeQuantizeBase
from observers.validation import check_ch_axis

__all__ = [
    "DerivedObserverOrFakeQuantize",
    "ObserverOrFakeQuantize",
    "ObserverOrFakeQuantizeConstructor",
]

ObserverOrFakeQuantize = Union[ObserverBase, FakeQuantizeBase]  # noqa: UP007 (a runtime alias)
"""An observer or fake-quantize module instance."""

ObserverOrFakeQuantizeConstructor = Union[  # noqa: UP007 (a runtime alias)
    PartialWrapper, type[ObserverBase], type[FakeQuantizeBase]
]
"""Something that builds one: a class or a ``with_args`` constructor."""


class DerivedObserverOrFakeQuantize(ObserverBase):
    """Observer whose ``calculate_qparams()`` is ``derive_qparams_fn(obs_or_fqs)``.

    Args:
        dtype: quantized dtype of this edge.
        obs_or_fqs: the observers/fake quants the qparams derive from.
        derive_qparams_fn: maps ``obs_or_fqs`` to ``(scale, zero_point)``.
        quant_min, quant_max, qscheme, ch_axis: this edge's settings; a
            per-channel qscheme needs ``ch_axis``.
    """

    def __init__(
        self,
        dtype: torch.dtype,
        obs_or_fqs: list[ObserverOrFakeQuantize],
        derive_qparams_fn: Callable[
            [list[ObserverOrFakeQuantize]], tuple[torch.Tensor, torch.Tensor]
        ],
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        ch_axis: int | None = None,
    ) -> None:
        super().__init__(dtype)
        check_ch_axis(qscheme, ch_axis, owner="DerivedObserverOrFakeQuantize")
        self.obs_or_fqs = obs_or_fqs
        self.derive_qparams_fn = derive_qparams_fn
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qscheme = qscheme
        self.ch_axis = ch_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``derive_qparams_fn(obs_or_fqs)``."""
        return self.derive_qparams_fn(self.obs_or_fqs)
