"""The backend registry: one name -> (quantizer, default config, lower function, check).

Tutorials, benchmarks and the command-line tool pick a backend by name here
instead of branching on names. This is the one documented place that names both
sides of the pipeline: dependencies point ``quantizers -> pt2e -> observers`` and
``lowering -> pt2e``, so a :class:`Backend` refers to its quantizer by a lazy
``"package.module:attr"`` string, imported on first use; importing
:mod:`lowering` never imports :mod:`quantizers`.

>>> {"x86_inductor", "xnnpack"} <= {b.name for b in list_backends()}
True
>>> get_backend("xnnpack").lower_function
'lowering.executorch:to_executorch'

The whole flow through the registry (not run here: lowering takes seconds)::

    backend = get_backend("x86_inductor")
    quantizer = backend.quantizer(**backend.recommended_config_kwargs())
    prepared = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    calibrate(prepared, batches)
    converted = backend.convert(prepared)
    lowered = backend.lower(converted, args)
    assert backend.check(converted, lowered) == [], lowered.report

A backend author registers a new one with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch.fx import GraphModule

from pt2e.cpu import cpu_has_vnni
from pt2e.errors import ArgumentTypeError, ArgumentValueError

from .contract import Lowered, LoweringError

__all__ = [
    "Backend",
    "get_backend",
    "list_backends",
    "register_backend",
    "UnknownBackendError",
    "DuplicateBackendError",
    "BackendImportError",
]

#: A lazy reference ("package.module:attr") or the object itself.
Ref = str | Callable[..., Any]


class UnknownBackendError(LoweringError, KeyError, ValueError):
    """No backend is registered under that name (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateBackendError(LoweringError, ValueError):
    """A backend is already registered under that name."""


class BackendImportError(LoweringError, ImportError):
    """A backend's lazy reference names a module or attribute that cannot be imported."""


def _resolve(ref: Ref, *, backend: str, role: str) -> Any:
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise BackendImportError(
            f"backend '{backend}': cannot import its {role} {ref!r} ({e}); install the backend's "
            "package, or fix the reference (\"package.module:attr\") passed to Backend"
        ) from e
    return obj


def _x86_recommended_config() -> dict[str, Any]:
    # without VNNI, full-range uint8 activations saturate in oneDNN's u8*s8 kernels
    return {"reduce_range": not cpu_has_vnni()}


def _openvino_recommended_config() -> dict[str, Any]:
    # without VNNI, OpenVINO's u8*s8 int8 kernels saturate with full-range weights
    return {} if cpu_has_vnni() else {"overflow_fix": "enable"}


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One backend: how to quantize for it, lower to it and check what ran in int8.

    ``quantizer_class``, ``default_config``, ``lower_function``, ``check_function``
    and ``recommended_config`` are lazy references (``"package.module:attr"``) or the
    objects themselves. ``default_config(**kwargs)`` returns a ``QuantizationConfig``;
    ``lower_function`` follows :mod:`lowering.contract`; ``check_function(converted,
    lowered)`` returns the problems (``[]``: every int8 op ran in int8);
    ``recommended_config()`` returns the config keywords this machine needs (e.g.
    ``reduce_range`` on x86 CPUs without VNNI). ``default_convert_kwargs`` are
    passed to ``convert_pt2e`` by :meth:`convert`.

    >>> b = Backend(name="toy", description="a toy", quantizer_class="quantizers:XNNPACKQuantizer",
    ...             default_config="quantizers:get_symmetric_quantization_config",
    ...             lower_function="lowering:to_executorch", check_function="lowering:check_xnnpack_int8")
    >>> b.recommended_config_kwargs(), dict(b.default_convert_kwargs)
    ({}, {})
    >>> Backend(name="bad", description="", quantizer_class="quantizers.XNNPACKQuantizer",
    ...         default_config="m:f", lower_function="m:f", check_function="m:f")
    Traceback (most recent call last):
    ...
    pt2e.errors.ArgumentValueError: Backend(name='bad'): quantizer_class='quantizers.XNNPACKQuantizer' is not a lazy reference; write it as "package.module:attr" (e.g. "quantizers:XNNPACKQuantizer") or pass the object itself
    """

    name: str
    description: str
    quantizer_class: Ref
    default_config: Ref
    lower_function: Ref
    check_function: Ref
    recommended_config: Ref | None = None
    default_convert_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ArgumentValueError(f"Backend(name={self.name!r}): the name must be a non-empty str")
        for role in ("quantizer_class", "default_config", "lower_function", "check_function",
                     "recommended_config"):
            ref = getattr(self, role)
            if ref is None and role == "recommended_config":
                continue
            if isinstance(ref, str):
                module_name, colon, attr = ref.partition(":")
                if not (module_name and colon and attr):
                    raise ArgumentValueError(
                        f"Backend(name={self.name!r}): {role}={ref!r} is not a lazy reference; write "
                        'it as "package.module:attr" (e.g. "quantizers:XNNPACKQuantizer") or pass '
                        "the object itself"
                    )
            elif not callable(ref):
                raise ArgumentTypeError(
                    f"Backend(name={self.name!r}): {role} must be a \"package.module:attr\" string "
                    f"or a callable, got {type(ref).__name__}"
                )
        object.__setattr__(self, "default_convert_kwargs",
                           MappingProxyType(dict(self.default_convert_kwargs)))

    def resolve(self, role: str) -> Any:
        """Import and return one of the references (``"lower_function"``...)."""
        ref = getattr(self, role)
        return None if ref is None else _resolve(ref, backend=self.name, role=role)

    def recommended_config_kwargs(self) -> dict[str, Any]:
        """The ``default_config`` keywords this machine needs (``{}`` when none)."""
        fn = self.resolve("recommended_config")
        return dict(fn()) if fn is not None else {}

    def quantizer(self, **config_kwargs: Any) -> Any:
        """``QuantizerClass().set_global(default_config(**config_kwargs))``."""
        cls = self.resolve("quantizer_class")
        config = self.resolve("default_config")(**config_kwargs)
        return cls().set_global(config)

    def convert(self, prepared: GraphModule, **convert_kwargs: Any) -> GraphModule:
        """``convert_pt2e`` with this backend's :attr:`default_convert_kwargs` (overridable)."""
        from pt2e import convert_pt2e

        return convert_pt2e(prepared, **{**self.default_convert_kwargs, **convert_kwargs})

    def lower(self, model: GraphModule, example_inputs: Sequence[Any], **options: Any) -> Lowered:
        """Lower ``model`` with this backend's lower function (see :mod:`lowering.contract`)."""
        lowered: Lowered = self.resolve("lower_function")(model, example_inputs, **options)
        return lowered

    def check(self, converted: GraphModule, lowered: Lowered) -> list[str]:
        """The int8 compute ops of ``converted`` that ``lowered`` ran in float (``[]``: none)."""
        problems: list[str] = self.resolve("check_function")(converted, lowered)
        return problems


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry and return it; ``replace=True`` overwrites one of the
    same name, otherwise a name already taken raises :class:`DuplicateBackendError`.

    >>> register_backend(get_backend("xnnpack"))
    Traceback (most recent call last):
    ...
    lowering.backends.DuplicateBackendError: a backend named 'xnnpack' is already registered (XNNPACK via ExecuTorch: ...); pick another name, or pass replace=True to overwrite it
    """
    if not isinstance(backend, Backend):
        raise ArgumentTypeError(
            f"register_backend expects a lowering.Backend, got {type(backend).__name__}"
        )
    old = _REGISTRY.get(backend.name)
    if old is not None and not replace:
        raise DuplicateBackendError(
            f"a backend named '{backend.name}' is already registered ({old.description}); pick "
            "another name, or pass replace=True to overwrite it"
        )
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``.

    >>> get_backend("x86_inductor").quantizer_class
    'quantizers:X86InductorQuantizer'
    >>> get_backend("tensorrt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowering.backends.UnknownBackendError: no backend named 'tensorrt'; registered backends: ...x86_inductor, xnnpack
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownBackendError(
            f"no backend named {name!r}; registered backends: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_backends() -> list[Backend]:
    """Every registered backend, in registration order.

    >>> [b.name for b in list_backends()][:2]
    ['x86_inductor', 'xnnpack']
    """
    return list(_REGISTRY.values())


register_backend(Backend(
    name="x86_inductor",
    description="x86 CPUs: Inductor with freezing, oneDNN int8 conv/linear kernels",
    quantizer_class="quantizers:X86InductorQuantizer",
    default_config="quantizers:get_default_x86_inductor_quantization_config",
    lower_function="lowering.x86_inductor:compile_x86",
    check_function="lowering.x86_inductor:check_x86_int8",
    recommended_config="lowering.backends:_x86_recommended_config",
))
register_backend(Backend(
    name="xnnpack",
    description="XNNPACK via ExecuTorch: a .pte whose int8 ops run inside the XNNPACK delegate",
    quantizer_class="quantizers:XNNPACKQuantizer",
    default_config="quantizers:get_symmetric_quantization_config",
    lower_function="lowering.executorch:to_executorch",
    check_function="lowering.executorch:check_xnnpack_int8",
))
# ONNX: the X86 recipe, because onnxruntime's x86 CPU kernels are u8 x s8 (QLinearConv,
# MatMulInteger): its QDQ fusion leaves int8-activation convs (the XNNPACK recipe) in float
register_backend(Backend(
    name="onnx",
    description="ONNX QDQ file run by onnxruntime (CPU): int8 QLinearConv / MatMulInteger kernels",
    quantizer_class="quantizers:X86InductorQuantizer",
    default_config="quantizers:get_default_x86_inductor_quantization_config",
    lower_function="lowering.onnx:export_onnx",
    check_function="lowering.onnx:check_onnx_int8",
    recommended_config="lowering.backends:_x86_recommended_config",
))
# OpenVINO: its frontend needs float weight -> q -> dq (it ignores a lone dequantize of an
# int8 constant); to_openvino re-expands folded weights anyway, this just skips the work
register_backend(Backend(
    name="openvino",
    description="OpenVINO CPU plugin (convert_model on the exported graph): u8/i8 conv, FC, matmul",
    quantizer_class="quantizers:OpenVINOQuantizer",
    default_config="quantizers:get_openvino_quantization_config",
    lower_function="lowering.openvino:to_openvino",
    check_function="lowering.openvino:check_openvino_int8",
    recommended_config="lowering.backends:_openvino_recommended_config",
    default_convert_kwargs={"fold_quantize": False},
))
