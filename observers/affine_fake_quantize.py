"""Fake quantization for the affine family: any granularity, for quantization-aware training.

:class:`AffineFakeQuantize` wraps an :class:`~observers.affine.AffineQuantizedObserverBase`
(default :class:`~observers.affine.AffineQuantizedMinMaxObserver`) and applies
:func:`~observers.affine_qparams.fake_quantize_affine` with its per-block qparams; convert
turns it into the same affine quantize/dequantize ops as its observer.

>>> import torch
>>> fq = default_groupwise_fake_quant()
>>> y = fq(torch.randn(4, 256))
>>> fq.block_size, tuple(fq.scale.shape)
((1, 128), (4, 2))
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from observers.affine import AffineQuantizedMinMaxObserver, AffineQuantizedObserverBase
from observers.affine_qparams import fake_quantize_affine
from observers.errors import QuantizationConfigError
from observers.fake_quantize import FakeQuantize, FakeQuantizeBase
from observers.granularity import MappingType, PerAxis, PerGroup, PerTensor, ZeroPointDomain

__all__ = [
    "AffineFakeQuantize",
    "default_affine_fake_quant",
    "default_groupwise_fake_quant",
    "default_affine_per_axis_fake_quant",
]


class AffineFakeQuantize(FakeQuantize):
    """Observe with an affine observer and fake quantize with its per-block qparams.

    Args:
        observer: an :class:`~observers.affine.AffineQuantizedObserverBase` class or constructor.
        is_dynamic: passed to the observer.
        **observer_kwargs: the observer's arguments (``mapping_type``, ``target_dtype``,
            ``granularity``, ``quant_min``, ...).

    >>> import torch
    >>> fq = AffineFakeQuantize(mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.uint8,
    ...                         granularity=PerTensor())
    >>> x = torch.tensor([0.0, 0.5, 1.0])
    >>> (fq(x) - x).abs().max().item() < 1.0 / 255
    True
    """

    def __init__(
        self,
        observer: Any = AffineQuantizedMinMaxObserver,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        # FakeQuantize's own setup reads qscheme/ch_axis, which affine observers do not have
        FakeQuantizeBase.__init__(self)
        observer_kwargs["is_dynamic"] = is_dynamic
        obs = observer(**observer_kwargs)
        if not isinstance(obs, AffineQuantizedObserverBase):
            raise QuantizationConfigError(
                f"AffineFakeQuantize: observer must build an AffineQuantizedObserverBase, got "
                f"{type(obs).__name__}; use FakeQuantize for the per-tensor/per-channel observers."
            )
        self.activation_post_process: AffineQuantizedObserverBase = obs
        self.target_dtype = obs.target_dtype
        self.dtype = obs.target_dtype
        self.quant_min = obs.quant_min
        self.quant_max = obs.quant_max
        self.zero_point_domain = obs.zero_point_domain
        self.mapping_type = obs.mapping_type
        self.granularity = obs.granularity
        self.is_dynamic = is_dynamic
        self.qscheme = None
        self.ch_axis = -1
        self.is_per_channel = False
        zp_dtype = torch.float if self.zero_point_domain == ZeroPointDomain.FLOAT else torch.int
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=zp_dtype))
        self.block_size: tuple[int, ...] | None = None

    def calculate_qparams(self, **kwargs: Any) -> Any:
        """The observer's per-block ``(scale, zero_point)``."""
        return self.activation_post_process.calculate_qparams()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.numel() == 0:
            return X
        if self.observer_enabled[0] == 1 or self.block_size is None:
            self.activation_post_process(X.detach())
            self.block_size = self.activation_post_process.block_size
        if self.observer_enabled[0] == 1:
            scale, zero_point = self.calculate_qparams()
            self.scale = scale.detach().to(self.scale.device).clone()
            if zero_point is not None:
                self.zero_point = zero_point.detach().to(self.zero_point.device).clone()
        if self.fake_quant_enabled[0] == 1 and self.block_size is not None:
            zp = None if self.zero_point_domain == ZeroPointDomain.NONE else self.zero_point
            X = fake_quantize_affine(
                X, self.block_size, self.scale, zp, self.target_dtype, self.quant_min,
                self.quant_max, self.zero_point_domain or ZeroPointDomain.INT,
            )
        return X

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, "
            f"target_dtype={self.target_dtype}, granularity={self.granularity}, "
            f"mapping_type={self.mapping_type}, zero_point_domain={self.zero_point_domain}, "
            f"scale={self.scale}, zero_point={self.zero_point}, block_size={self.block_size}"
        )

    def convert(self, model: GraphModule, observer_node: Node) -> None:
        """Replace this module's node with its observer's affine quantize/dequantize ops."""
        self.activation_post_process.convert(model, observer_node)


default_affine_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.ASYMMETRIC,
    target_dtype=torch.uint8,
    granularity=PerTensor(),
)
"""Per-tensor asymmetric uint8 affine fake quantization (activations)."""

default_groupwise_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.SYMMETRIC,
    target_dtype=torch.int8,
    granularity=PerGroup(128),
)
"""Symmetric int8 fake quantization per group of 128 (weights)."""

default_affine_per_axis_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.SYMMETRIC,
    target_dtype=torch.int8,
    granularity=PerAxis(0),
)
"""Symmetric int8 fake quantization per output channel (weights)."""
