"""Observer base classes: the interface ``prepare_pt2e``/``convert_pt2e`` rely on.

An observer is an ``nn.Module`` inserted on a graph edge. ``forward(x)`` records
statistics and returns ``x`` unchanged; ``calculate_qparams()`` turns them into
``(scale, zero_point)``; the attributes ``dtype``, ``qscheme``, ``quant_min``,
``quant_max``, ``is_dynamic`` (and ``ch_axis`` per channel) tell convert which
quantize/dequantize ops to emit.

>>> import torch
>>> from observers import MinMaxObserver
>>> obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
>>> y = obs(torch.tensor([-1.0, 0.5, 2.0]))
>>> scale, zero_point = obs.calculate_qparams()
>>> round(scale.item(), 6), zero_point.item()
(0.015686, 0)
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from observers.errors import ObserverStateError, QuantizationConfigError, UnsupportedOperationError
from observers.factory import with_args as _with_args
from observers.factory import with_callable_args as _with_callable_args
from observers.qparams import DEFAULT_EPS, qparams_from_min_max, resolve_quant_range
from observers.validation import ALL_QSCHEMES, OBSERVER_DTYPES, check_dtype, check_qscheme

__all__ = ["ObserverBase", "UniformQuantizationObserverBase"]

CALIBRATION_HINT = (
    "Run calibration data through the prepared model before convert_pt2e / "
    "calculate_qparams(), and check that the values reaching this observer are finite."
)


def adopt_state_shapes(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, names: tuple[str, ...]
) -> None:
    """Give ``module``'s buffers ``names`` the shapes stored in ``state_dict``.

    Per-channel statistics start empty (the channel count is unknown until data
    arrives), so a fresh observer cannot load a calibrated state dict with the
    default ``nn.Module`` loader. Replacing the buffer with an empty one of the
    right shape lets the loader copy the values in.
    """
    for name in names:
        value = state_dict.get(prefix + name)
        current = module._buffers.get(name)
        if isinstance(value, torch.Tensor) and current is not None and value.shape != current.shape:
            module._buffers[name] = torch.empty(
                value.shape, dtype=current.dtype, device=current.device
            )


class ShapeAdoptingModule(nn.Module):
    """``nn.Module`` whose state-dict loading first adapts the module to the incoming state.

    The observers and fake-quantize modules all need the same thing: buffers
    (or parameters) sized by the data they saw must be resized before the
    default loader copies values into them. This class owns the one override
    of ``_load_from_state_dict``; subclasses list their data-shaped buffers in
    ``_data_shaped_buffers`` and, when resizing is not enough, extend
    ``_before_state_load`` / ``_after_state_load``.
    """

    # Buffers whose shape depends on the data; loading a state dict resizes them.
    _data_shaped_buffers: ClassVar[tuple[str, ...]] = ()

    def _before_state_load(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
    ) -> None:
        """Prepare ``self`` (or ``state_dict``) for loading; by default resize data-shaped buffers."""
        adopt_state_shapes(self, state_dict, prefix, self._data_shaped_buffers)

    def _after_state_load(self) -> None:
        """Restore what loading resets (nothing by default)."""

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._before_state_load(state_dict, prefix, local_metadata)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._after_state_load()


class ObserverBase(ShapeAdoptingModule, metaclass=abc.ABCMeta):
    """Base of every observer.

    Args:
        dtype: the dtype of the ``quantize`` op convert will insert.
        is_dynamic: if True, convert inserts ``choose_qparams`` so the range is
            computed at run time instead of from calibration.

    Subclasses implement ``forward`` (returns its input unchanged) and
    ``calculate_qparams``.

    >>> import torch
    >>> class CountingObserver(ObserverBase):
    ...     def forward(self, x):
    ...         return x
    ...     def calculate_qparams(self):
    ...         return torch.tensor([1.0]), torch.tensor([0])
    >>> CountingObserver(torch.quint8).calculate_qparams()
    (tensor([1.]), tensor([0]))
    """

    def __init__(self, dtype: torch.dtype, is_dynamic: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.is_dynamic = is_dynamic

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record statistics of ``x`` and return ``x`` unchanged."""

    @abc.abstractmethod
    def calculate_qparams(self, **kwargs: Any) -> Any:
        """Return ``(scale, zero_point)`` computed from the recorded statistics."""

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)


class UniformQuantizationObserverBase(ObserverBase):
    """Common base of the observers that compute affine/symmetric uniform qparams.

    Args:
        dtype: quantized dtype (``torch.quint8``, ``torch.qint8``, ``torch.int8``,
            ``torch.uint8``, ``torch.int16``, ``torch.qint32``, ...).
        qscheme: one of ``torch.per_tensor_affine``, ``torch.per_tensor_symmetric``,
            ``torch.per_channel_affine``, ``torch.per_channel_symmetric``,
            ``torch.per_channel_affine_float_qparams`` (subclasses accept a subset).
        reduce_range: drop one bit of the range (deprecated; prefer quant_min/quant_max).
        quant_min, quant_max: custom integer range, both or neither; it must
            contain 0 and fit ``dtype`` (e.g. ``-8, 7`` for int4 in int8).
        factory_kwargs: ``{"device": ..., "dtype": ...}`` for the buffers.
        eps: lower bound on the scale (default float32 machine epsilon).
        is_dynamic: see :class:`ObserverBase`.

    Raises:
        QuantizationConfigError: on an unsupported dtype, qscheme or range.

    >>> import torch
    >>> from observers import PerChannelMinMaxObserver
    >>> obs = PerChannelMinMaxObserver(dtype=torch.int8, quant_min=-8, quant_max=7,
    ...                                qscheme=torch.per_channel_symmetric)
    >>> obs.quant_min, obs.quant_max
    (-8, 7)
    """

    # Version 3 matches torchao, so state dicts move between the two.
    _version = 3
    _supported_qschemes: ClassVar[tuple[torch.qscheme, ...]] = ALL_QSCHEMES
    _qscheme_hint: ClassVar[str] = ""
    # Set by observers that cannot do dynamic quantization: is_dynamic=True is
    # then rejected with this advice.
    _dynamic_unsupported_hint: ClassVar[str] = ""
    _data_shaped_buffers: ClassVar[tuple[str, ...]] = ("min_val", "max_val")

    eps: torch.Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = DEFAULT_EPS,
        is_dynamic: bool = False,
    ) -> None:
        # Subclasses forward these arguments positionally: the order is torchao's,
        # pinned by tests/observers/test_observers_public_api.py.
        owner = type(self).__name__
        if is_dynamic and self._dynamic_unsupported_hint:
            raise QuantizationConfigError(
                f"{owner}: is_dynamic=True is not supported; {self._dynamic_unsupported_hint}"
            )
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        check_qscheme(qscheme, self._supported_qschemes, owner=owner, hint=self._qscheme_hint)
        check_dtype(dtype, OBSERVER_DTYPES, owner=owner)
        if (
            reduce_range
            and qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
            and dtype == torch.quint8
        ):
            raise QuantizationConfigError(
                f"{owner}: reduce_range=True is not supported with qscheme={qscheme} and "
                f"dtype={dtype}; pass quant_min/quant_max instead."
            )
        if not eps > 0:
            raise QuantizationConfigError(f"{owner}: eps={eps} must be a positive float.")
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        self.quant_min, self.quant_max = resolve_quant_range(
            dtype, quant_min, quant_max, reduce_range, owner=owner
        )
        self.factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.register_buffer("eps", torch.tensor([eps], **self.factory_kwargs))
        # NaN/Inf values skipped so far: convert_pt2e reports them (a plain attribute,
        # not state: a state dict stays torchao's)
        self.nonfinite_seen = 0
        self._register_statistics()

    def _register_statistics(self) -> None:
        """Register the buffers the observer records into (called once ``factory_kwargs`` is set)."""

    def count_nonfinite(self, x: torch.Tensor) -> None:
        """Add the NaN/Inf values of ``x`` to ``nonfinite_seen`` (they are skipped, not observed).

        >>> import torch
        >>> from observers import MinMaxObserver
        >>> obs = MinMaxObserver()
        >>> _ = obs(torch.tensor([1.0, float("nan"), float("inf")]))
        >>> obs.nonfinite_seen
        2
        """
        if not x.is_floating_point():
            return
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self.nonfinite_seen = getattr(self, "nonfinite_seen", 0) + int(
                x.numel() - int(finite.sum()))

    def _check_observed(self, min_val: torch.Tensor, max_val: torch.Tensor) -> None:
        """Raise ObserverStateError unless every entry of the range saw finite data."""
        name = type(self).__name__
        skipped = getattr(self, "nonfinite_seen", 0)
        if skipped and (min_val.numel() == 0 or not bool(torch.isfinite(min_val).any())):
            raise ObserverStateError(
                f"{name} saw only NaN/Inf ({skipped} value(s), skipped) and no finite data. "
                "Check the calibration inputs and the layers before this observer for "
                "overflow or invalid values."
            )
        if min_val.numel() == 0 or max_val.numel() == 0:
            raise ObserverStateError(f"{name} has not observed any data. {CALIBRATION_HINT}")
        unseen = ~(torch.isfinite(min_val) & torch.isfinite(max_val))
        if bool(unseen.all()):
            raise ObserverStateError(
                f"{name} has not observed any finite values (no data, or only NaN/Inf). "
                f"{CALIBRATION_HINT}"
            )
        if bool(unseen.any()):
            channels = unseen.reshape(-1).nonzero().reshape(-1).tolist()
            raise ObserverStateError(
                f"{name}: channels {channels[:10]} (along ch_axis) observed no finite values. "
                f"{CALIBRATION_HINT}"
            )
        if bool((min_val > max_val).any()):
            raise ObserverStateError(
                f"{name}: min_val={min_val.tolist()} exceeds max_val={max_val.tolist()}; the "
                "observer state is inconsistent (was it loaded from an edited state dict?)."
            )

    def _calculate_qparams(
        self, min_val: torch.Tensor, max_val: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the given range with this observer's settings."""
        self._check_observed(min_val, max_val)
        return qparams_from_min_max(
            min_val,
            max_val,
            qscheme=self.qscheme,
            dtype=self.dtype,
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            eps=self.eps,
            customized_range=self.has_customized_qrange,
        )

    def reset_min_max_vals(self) -> None:
        """Forget the observed range."""
        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot reset its min/max values; build a new observer "
            "to start from an empty range."
        )

    def _before_state_load(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
    ) -> None:
        version = local_metadata.get("version")
        if (version is None or version < 2) and prefix + "eps" not in state_dict:
            # eps became a buffer in version 2; older state dicts carry none.
            state_dict[prefix + "eps"] = torch.tensor([DEFAULT_EPS])
        super()._before_state_load(state_dict, prefix, local_metadata)
