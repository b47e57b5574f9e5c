"""LearnableFakeQuantize: fake quantization whose scale and zero point are trained (LSQ / TQT).

The observer initializes ``scale``/``zero_point`` (``nn.Parameter``); after
:meth:`LearnableFakeQuantize.enable_range_learning` they receive gradients
through ``torch._fake_quantize_learnable_per_tensor_affine`` (or its
per-channel twin) and the observer stops updating them. With
``use_grad_scaling=True`` their gradients are scaled by
``1 / sqrt(numel * quant_max)`` (LSQ, https://openreview.net/pdf?id=rkgO66VKDS).

``forward`` uses ``scale`` clamped to at least ``eps`` and the zero point
rounded and clamped to ``[quant_min, quant_max]``: exactly what
``calculate_qparams()`` returns.

>>> import torch
>>> from observers import LearnableFakeQuantize, MovingAverageMinMaxObserver
>>> fq = LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
>>> _ = fq(torch.linspace(-1.0, 1.0, 8))
>>> fq.enable_range_learning()
>>> fq(torch.linspace(-2.0, 2.0, 8)).sum().backward()
>>> fq.scale.grad is not None and fq.zero_point.grad is not None
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from observers.base import CALIBRATION_HINT
from observers.errors import ObserverStateError, QuantizationConfigError
from observers.fake_quantize import FakeQuantizeBase, module_switch
from observers.qparams import DEFAULT_EPS, symmetric_zero_point
from observers.validation import is_float_qparams, is_per_channel, is_symmetric

__all__ = ["LearnableFakeQuantize", "disable_range_learning", "enable_range_learning"]


class LearnableFakeQuantize(FakeQuantizeBase):
    """Fake quantization with learnable ``scale`` and ``zero_point``.

    Args:
        observer: observer class or constructor used to initialize the qparams.
        quant_min, quant_max: integer range (passed to the observer).
        use_grad_scaling: scale the qparam gradients by ``1 / sqrt(numel * quant_max)``.
        **observer_kwargs: other observer arguments.

    ``scale``/``zero_point`` are ``None`` until the first forward (or a state
    dict load) creates them. For symmetric schemes the zero point is fixed at
    the scheme's value (0 for signed dtypes) and is not learned.

    >>> import torch
    >>> from observers import MovingAverageMinMaxObserver
    >>> fq = LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=-8, quant_max=7,
    ...                            dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    >>> _ = fq(torch.tensor([-1.0, 1.0]))
    >>> scale, zero_point = fq.calculate_qparams()
    >>> round(scale.item(), 6), zero_point.item()
    (0.133333, 0)
    """

    scale: nn.Parameter | None
    zero_point: nn.Parameter | None
    learning_enabled: torch.Tensor
    eps: torch.Tensor

    def __init__(
        self,
        observer: Any,
        quant_min: int = 0,
        quant_max: int = 255,
        use_grad_scaling: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        observer_kwargs["quant_min"] = quant_min
        observer_kwargs["quant_max"] = quant_max
        self.activation_post_process = observer(**observer_kwargs)
        obs = self.activation_post_process
        if is_float_qparams(obs.qscheme):
            raise QuantizationConfigError(
                f"LearnableFakeQuantize: qscheme={obs.qscheme} is not supported (float zero "
                "points are not learnable); use per_channel_affine or per_channel_symmetric."
            )
        self.use_grad_scaling = use_grad_scaling
        self.quant_min = obs.quant_min
        self.quant_max = obs.quant_max
        self.dtype = obs.dtype
        self.qscheme = obs.qscheme
        self.is_dynamic = getattr(obs, "is_dynamic", False)
        self.ch_axis = getattr(obs, "ch_axis", -1)
        self.register_parameter("scale", None)
        self.register_parameter("zero_point", None)
        self.register_buffer("learning_enabled", torch.tensor([0], dtype=torch.uint8))
        self.register_buffer("eps", torch.tensor([DEFAULT_EPS]))
        self._initialized = False

    # -- switches --------------------------------------------------------------------------

    def _set_requires_grad(self, flag: bool) -> None:
        for param in (self.scale, self.zero_point):
            if param is not None:
                param.requires_grad = flag

    def enable_range_learning(self) -> None:
        """Learn the qparams by gradient descent; stops the observer."""
        self.learning_enabled[0] = 1
        self.disable_observer()
        self._set_requires_grad(True)

    def disable_range_learning(self) -> None:
        """Stop learning the qparams."""
        self.learning_enabled[0] = 0
        self._set_requires_grad(False)

    def enable_observer(self, enabled: bool = True) -> None:
        """Let the observer set the qparams again (which turns range learning off)."""
        self.observer_enabled[0] = 1 if enabled else 0
        if enabled:
            self.disable_range_learning()

    def observe_quant_params(self) -> None:
        """Print the current qparams (torchao compatibility)."""
        print(f"LearnableFakeQuantize Scale: {None if self.scale is None else self.scale.detach()}")
        print(
            "LearnableFakeQuantize Zero Point: "
            f"{None if self.zero_point is None else self.zero_point.detach()}"
        )

    # -- qparams ---------------------------------------------------------------------------

    def _create_qparams(self, scale_shape: torch.Size, zero_point_shape: torch.Size) -> None:
        learning = bool(self.learning_enabled[0] == 1)
        device = self.eps.device
        self.scale = nn.Parameter(torch.ones(scale_shape, device=device), requires_grad=learning)
        self.zero_point = nn.Parameter(
            torch.zeros(zero_point_shape, device=device), requires_grad=learning
        )
        self._initialized = True

    def _observe(self, x: torch.Tensor) -> None:
        self.activation_post_process(x.detach())
        scale, zero_point = self.activation_post_process.calculate_qparams()
        if self.scale is None or self.zero_point is None or self.scale.shape != scale.shape:
            self._create_qparams(scale.shape, zero_point.shape)
        scale_param, zero_point_param = self._require_initialized()
        scale_param.data.copy_(scale)
        zero_point_param.data.copy_(zero_point.float())

    def _require_initialized(self) -> tuple[nn.Parameter, nn.Parameter]:
        if self.scale is None or self.zero_point is None:
            raise ObserverStateError(
                f"LearnableFakeQuantize has no scale/zero_point yet. {CALIBRATION_HINT}"
            )
        return self.scale, self.zero_point

    def calculate_qparams(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale clamped to eps, zero point rounded and clamped, int64)``: what ``forward`` uses."""
        scale, zero_point = self._require_initialized()
        scale_out = scale.detach().clamp(min=float(self.eps))
        zero_point_out = zero_point.detach().round().clamp(self.quant_min, self.quant_max).long()
        return scale_out, zero_point_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1 or not self._initialized:
            self._observe(x)
        if self.fake_quant_enabled[0] != 1:
            return x
        scale, zero_point = self._require_initialized()
        if is_symmetric(self.qscheme):
            fixed = symmetric_zero_point(self.dtype, self.quant_min, self.quant_max, True)
            zero_point.data.fill_(fixed)
        grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
        effective_scale = scale.clamp(min=float(self.eps))
        if is_per_channel(self.qscheme):
            return torch._fake_quantize_learnable_per_channel_affine(
                x,
                effective_scale,
                zero_point,
                self.ch_axis,
                self.quant_min,
                self.quant_max,
                grad_factor,
            )
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, effective_scale, zero_point, self.quant_min, self.quant_max, grad_factor
        )

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"learning_enabled={self.learning_enabled}, quant_min={self.quant_min}, "
            f"quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}, "
            f"ch_axis={self.ch_axis}, use_grad_scaling={self.use_grad_scaling}"
        )

    def _before_state_load(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
    ) -> None:
        # scale/zero_point are parameters created on the first forward; create them
        # (with the stored shapes) so the loader has something to copy into.
        scale = state_dict.get(prefix + "scale")
        zero_point = state_dict.get(prefix + "zero_point")
        if isinstance(scale, torch.Tensor) and isinstance(zero_point, torch.Tensor):
            if self.scale is None or self.scale.shape != scale.shape:
                self._create_qparams(scale.shape, zero_point.shape)
        super()._before_state_load(state_dict, prefix, local_metadata)

    def _after_state_load(self) -> None:
        # learning_enabled is only known once loaded; requires_grad follows it.
        self._set_requires_grad(bool(self.learning_enabled[0] == 1))


@module_switch(LearnableFakeQuantize)
def enable_range_learning(mod: nn.Module) -> None:
    """Enable qparam learning on ``mod`` if it is a LearnableFakeQuantize; use with ``model.apply``.

    >>> import torch
    >>> from observers import MovingAverageMinMaxObserver
    >>> model = torch.nn.Sequential(LearnableFakeQuantize(MovingAverageMinMaxObserver))
    >>> _ = model.apply(enable_range_learning)
    >>> int(model[0].learning_enabled), int(model[0].observer_enabled)
    (1, 0)
    """


@module_switch(LearnableFakeQuantize)
def disable_range_learning(mod: nn.Module) -> None:
    """Disable qparam learning on ``mod`` if it is a LearnableFakeQuantize; use with ``model.apply``."""
