"""OpenVINOQuantizer: int8 (and weight-only int8/int4) recipes for OpenVINO's CPU plugin.

Same constructor and modes as ExecuTorch's
``executorch.backends.openvino.quantizer.OpenVINOQuantizer`` (which runs NNCF);
written as pattern tables (:mod:`quantizers.openvino_patterns`) on the shared
engine. What each mode annotates:

============================  =========================================================
``INT8_SYM`` (default)        activations int8 per-tensor symmetric (``uint8`` with zero
                              point 0 where the input is known non-negative), weights int8
                              per-channel symmetric; conv, linear, matmul, eltwise add
``INT8_MIXED``                activations ``uint8`` per-tensor affine, same weights and ops
``INT8_TRANSFORMER``          as ``INT8_MIXED``, but the residual adds stay float
``INT8WO_SYM`` / ``_ASYM``    conv/linear weights only, int8 per channel (sym / affine)
``INT4WO_SYM`` / ``_ASYM``    linear weights 4-bit per channel (sym ``-8..7`` / affine ``0..15``);
                              conv weights int8 (NNCF's backup precision for non-matmul layers)
============================  =========================================================

Activations use a histogram observer, weights a per-channel min/max observer
(the reference's choice). Differences from the reference, all tested:

* after a relu (sigmoid, softmax...) ``INT8_SYM`` uses ``0..255`` with zero point 0;
  the reference keeps zero point 128 there and loses half of the levels;
* layer norms are never given a weight observer, so transformer blocks quantize in
  every mode (the reference's ``INT8_SYM`` / ``INT8_MIXED`` crash with ``IndexError``
  on the 1-D LayerNorm bias);
* ``scaled_dot_product_attention`` stays float: OpenVINO 2026.4's CPU plugin fails at
  inference when its query/key inputs are quantized (the reference quantizes them);
* 4-bit weight-only is per output channel: ``group_size`` must be ``None`` (the
  quantize/dequantize op set the converted graph uses has no per-group op);
* ``overflow_fix`` (the reference's NNCF option, same values and default
  ``"first_layer_only"``) halves the weight range of the chosen layers to ``-63..63``:
  OpenVINO's int8 kernels on CPUs without VNNI (AVX2, AVX-512 without VNNI) sum u8*s8
  pairs in int16 and saturate with full-range weights (measured on an AVX2 EPYC: 24 dB
  instead of 57 dB against the converted model). ``"enable"`` covers every conv/linear;
  :mod:`lowering.backends` recommends it on such CPUs, and ``to_openvino`` warns there
  about full-range weights;
* bad arguments raise :mod:`pt2e.errors` subclasses; an ignored-scope entry that matches
  nothing raises :class:`~pt2e.errors.QuantizationConfigError` naming it.

>>> import torch
>>> from pt2e.quantizer import get_annotation
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
>>> gm = torch.export.export(m, (torch.randn(2, 4),)).module()
>>> _ = OpenVINOQuantizer(mode=QuantizationMode.INT8_SYM).annotate(gm)
>>> [(a.name, s.dtype) for n in gm.graph.nodes if n.name.startswith("linear")
...  for a, s in get_annotation(n).input_qspec_map.items() if a.op != "get_attr"]
[('input_1', torch.int8), ('relu', torch.uint8)]
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Node

from pt2e.errors import ArgumentTypeError, ArgumentValueError, QuantizationConfigError
from pt2e.ops import CONV_TRANSPOSE_OPS, LINEAR_OPS
from pt2e.quantizer import (
    QuantizationConfig,
    QuantizationSpec,
    get_annotation,
    is_valid_annotation,
    mark_annotated,
)
from pt2e.quantizer.annotation import clear_annotation

from .engine import TableQuantizer, activation_observer, weight_observer
from .openvino_patterns import (
    OPENVINO_PATTERNS,
    OPENVINO_TRANSFORMER_PATTERNS,
    OPENVINO_WEIGHT_ONLY_PATTERNS,
)
from .patterns import CONV_OPS, MATMUL_OPS, PatternTable

__all__ = [
    "OpenVINOQuantizer",
    "QuantizationMode",
    "get_openvino_quantization_config",
    "half_range_weight",
    "OVERFLOW_FIX_VALUES",
]

aten = torch.ops.aten


class QuantizationMode(enum.Enum):
    """The reference's modes, with the same values (``QuantizationMode("int8_sym")`` works)."""

    INT8_SYM = "int8_sym"
    INT8_MIXED = "int8_mixed"
    INT8_TRANSFORMER = "int8_transformer"
    INT8WO_SYM = "int8wo_sym"
    INT8WO_ASYM = "int8wo_asym"
    INT4WO_SYM = "int4wo_sym"
    INT4WO_ASYM = "int4wo_asym"


WEIGHT_ONLY_MODES = frozenset({
    QuantizationMode.INT8WO_SYM, QuantizationMode.INT8WO_ASYM,
    QuantizationMode.INT4WO_SYM, QuantizationMode.INT4WO_ASYM,
})
_INT4_MODES = frozenset({QuantizationMode.INT4WO_SYM, QuantizationMode.INT4WO_ASYM})
_INT8_STATIC_MODES = frozenset({
    QuantizationMode.INT8_SYM, QuantizationMode.INT8_MIXED, QuantizationMode.INT8_TRANSFORMER,
})
# what overflow_fix="enable" covers (NNCF's overflow-fix metatypes: convs, transposed convs, linear)
_OVERFLOW_FIX_OPS = CONV_OPS | CONV_TRANSPOSE_OPS | LINEAR_OPS


def _mode(mode: Any, where: str) -> QuantizationMode:
    """Accept our enum, the reference's enum (same values) or the value string."""
    value = getattr(mode, "value", mode)
    try:
        return QuantizationMode(value)
    except ValueError:
        allowed = ", ".join(m.name for m in QuantizationMode)
        raise ArgumentValueError(
            f"{where}: mode={mode!r} is not an OpenVINO quantization mode; pass one of "
            f"QuantizationMode.{{{allowed}}} (or its value, e.g. 'int8_sym')"
        ) from None


#: ``overflow_fix`` values (NNCF's ``OverflowFix``): the layers whose int8 weights use half the range
OVERFLOW_FIX_VALUES = ("enable", "first_layer_only", "disable")
#: the int8 weight range of a layer under the overflow fix (2 * 255 * 63 fits in int16)
HALF_RANGE = (-63, 63)


def _overflow_fix(value: Any, where: str, allowed: Sequence[str] = OVERFLOW_FIX_VALUES) -> str:
    value = getattr(value, "value", value)  # NNCF's OverflowFix enum, or its value
    if value not in allowed:
        raise ArgumentValueError(
            f"{where}: overflow_fix={value!r}; use one of {', '.join(map(repr, allowed))} "
            "(NNCF's OverflowFix values)"
        )
    return str(value)


def half_range_weight(spec: QuantizationSpec) -> QuantizationSpec:
    """``spec`` with the overflow fix's weight range, ``-63..63`` (an 8-bit symmetric weight spec).

    >>> half_range_weight(get_openvino_quantization_config().weight).quant_min
    -63
    """
    return dataclasses.replace(spec, quant_min=HALF_RANGE[0], quant_max=HALF_RANGE[1])


def _is_full_int8_weight(spec: Any) -> bool:
    return (isinstance(spec, QuantizationSpec) and spec.dtype == torch.int8
            and spec.qscheme in (torch.per_channel_symmetric, torch.per_tensor_symmetric)
            and spec.quant_min == -127 and spec.quant_max == 127)


def _weight_spec(*, bits: int, symmetric: bool) -> QuantizationSpec:
    if symmetric:
        # narrow range: OpenVINO's (and NNCF's) symmetric weights have 2**bits - 1 levels
        lo, hi, dtype, qscheme = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1, torch.int8, torch.per_channel_symmetric
        if bits == 4:
            lo = -8  # NNCF's int4_sym range
    else:
        lo, hi, dtype, qscheme = 0, 2**bits - 1, torch.uint8, torch.per_channel_affine
    return QuantizationSpec(
        dtype=dtype, quant_min=lo, quant_max=hi, qscheme=qscheme, ch_axis=0,
        observer_or_fake_quant_ctr=weight_observer(is_qat=False, per_channel=True),
    )


def get_openvino_quantization_config(mode: Any = QuantizationMode.INT8_SYM, *,
                                     overflow_fix: str = "disable") -> QuantizationConfig:
    """The global config of ``mode``: activation and weight specs (``None`` activations: weight-only).

    ``overflow_fix="enable"`` gives every int8 weight the half range ``-63..63`` (for
    CPUs without VNNI; see :class:`OpenVINOQuantizer`, whose ``"first_layer_only"``
    depends on the graph and so is not a config).

    In ``INT8_SYM`` this is the *signed* activation spec; inputs known to be
    non-negative get its unsigned twin (:func:`quantizers.openvino_patterns.unsigned_spec`).

    >>> cfg = get_openvino_quantization_config("int8_sym")
    >>> cfg.input_activation.dtype, cfg.input_activation.qscheme, cfg.weight.quant_min
    (torch.int8, torch.per_tensor_symmetric, -127)
    >>> get_openvino_quantization_config(QuantizationMode.INT8_MIXED).input_activation.dtype
    torch.uint8
    >>> cfg = get_openvino_quantization_config("int4wo_asym")
    >>> cfg.input_activation, (cfg.weight.quant_min, cfg.weight.quant_max)
    (None, (0, 15))
    """
    mode = _mode(mode, "get_openvino_quantization_config")
    fix = _overflow_fix(overflow_fix, "get_openvino_quantization_config", ("enable", "disable"))
    if fix == "enable" and mode not in _INT8_STATIC_MODES:
        raise ArgumentValueError(
            f"get_openvino_quantization_config(mode={mode.name}, overflow_fix='enable'): the "
            "overflow fix applies to the static int8 modes (INT8_SYM, INT8_MIXED, INT8_TRANSFORMER)"
        )
    if mode in WEIGHT_ONLY_MODES:
        symmetric = mode in (QuantizationMode.INT8WO_SYM, QuantizationMode.INT4WO_SYM)
        bits = 4 if mode in _INT4_MODES else 8
        return QuantizationConfig(None, None, _weight_spec(bits=bits, symmetric=symmetric), None, False)
    observer = activation_observer(is_qat=False, is_dynamic=False)
    if mode is QuantizationMode.INT8_SYM:
        act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                               qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=observer)
    else:
        act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                               qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=observer)
    weight = _weight_spec(bits=8, symmetric=True)
    return QuantizationConfig(act, act, half_range_weight(weight) if fix == "enable" else weight, None, False)


def _table(mode: QuantizationMode) -> PatternTable:
    if mode in WEIGHT_ONLY_MODES:
        return OPENVINO_WEIGHT_ONLY_PATTERNS
    if mode is QuantizationMode.INT8_TRANSFORMER:
        return OPENVINO_TRANSFORMER_PATTERNS
    return OPENVINO_PATTERNS


_SDPA = frozenset({aten.scaled_dot_product_attention.default})
_SDPA_REASON = ("OpenVINO 2026.4's CPU plugin fails at inference when SDPA inputs are quantized; "
                "SDPA stays float (write attention as matmuls to quantize it)")


def _op_name(node: Node) -> str:
    """``linear`` for ``aten.linear.default``: the type name an ignored scope matches."""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


class OpenVINOQuantizer(TableQuantizer):
    """Annotate an exported model for OpenVINO (``lowering.to_openvino`` runs it).

    ``mode`` is a :class:`QuantizationMode` (or the reference's enum, or its value);
    ``group_size`` applies to the 4-bit weight-only modes and must be ``None``
    (per output channel). ``overflow_fix`` is the reference's NNCF option
    (``"enable"``, ``"first_layer_only"``, ``"disable"`` or NNCF's ``OverflowFix``;
    ``None``: ``"first_layer_only"`` in the static int8 modes, as the reference):
    the int8 weights of every conv/linear, or of the first convs reached from each
    model input, use the half range ``-63..63`` so that CPUs without VNNI do not
    saturate. The reference's other keyword arguments are NNCF algorithm options
    and are refused with a message.

    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1)).eval()
    >>> gm = torch.export.export(m, (torch.randn(1, 3, 8, 8),)).module()
    >>> _ = OpenVINOQuantizer().annotate(gm)
    >>> [get_annotation(n).input_qspec_map[n.args[1]].quant_min
    ...  for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    [-63, -127]

    >>> q = OpenVINOQuantizer(mode=QuantizationMode.INT8_TRANSFORMER)
    >>> q.mode, [p.name for p in q.patterns]
    (<QuantizationMode.INT8_TRANSFORMER: 'int8_transformer'>, ['conv', 'linear', 'matmul'])
    >>> OpenVINOQuantizer(mode="int4wo_sym", group_size=128)
    Traceback (most recent call last):
    ...
    pt2e.errors.QuantizationConfigError: OpenVINOQuantizer(mode=INT4WO_SYM, group_size=128): only per-channel 4-bit weights are supported (group_size=None); the converted graph's quantize/dequantize ops have no per-group form
    """

    patterns = OPENVINO_PATTERNS
    float_reasons = {_SDPA: _SDPA_REASON}

    def __init__(
        self, *, mode: Any = QuantizationMode.INT8_SYM, group_size: int | None = None,
        overflow_fix: Any = None, **kwargs: Any
    ) -> None:
        super().__init__()
        self.mode = _mode(mode, "OpenVINOQuantizer")
        if overflow_fix is not None and self.mode not in _INT8_STATIC_MODES:
            raise ArgumentValueError(
                f"OpenVINOQuantizer(mode={self.mode.name}, overflow_fix={overflow_fix!r}): the "
                "overflow fix applies to the static int8 modes (INT8_SYM, INT8_MIXED, "
                "INT8_TRANSFORMER); drop it"
            )
        #: which layers get half-range int8 weights ("disable" in the weight-only modes)
        self.overflow_fix = ("disable" if self.mode not in _INT8_STATIC_MODES
                             else _overflow_fix(overflow_fix or "first_layer_only", "OpenVINOQuantizer"))
        if kwargs:
            raise ArgumentValueError(
                f"OpenVINOQuantizer got unsupported keyword(s) {sorted(kwargs)}: those are NNCF "
                "algorithm options of the reference quantizer; this one takes mode= and group_size="
            )
        if group_size is not None and group_size != -1:
            if self.mode not in _INT4_MODES:
                raise ArgumentValueError(
                    f"OpenVINOQuantizer(mode={self.mode.name}, group_size={group_size}): group_size "
                    "applies to INT4WO_SYM / INT4WO_ASYM only; drop it"
                )
            raise QuantizationConfigError(
                f"OpenVINOQuantizer(mode={self.mode.name}, group_size={group_size}): only "
                "per-channel 4-bit weights are supported (group_size=None); the converted graph's "
                "quantize/dequantize ops have no per-group form"
            )
        self.group_size = None
        self.patterns = _table(self.mode)  # the engine reads it per instance
        self._set_global(get_openvino_quantization_config(self.mode))
        if self.mode in _INT4_MODES:
            # NNCF keeps non-matmul layers at its backup precision, 8 bits
            backup = (QuantizationMode.INT8WO_SYM if self.mode is QuantizationMode.INT4WO_SYM
                      else QuantizationMode.INT8WO_ASYM)
            self._set_operator_type(CONV_OPS, get_openvino_quantization_config(backup), "mode")
        self.ignored_scope: dict[str, Any] = {}
        self._ignored_nodes: dict[str, str] = {}

    def set_global(self, quantization_config: QuantizationConfig | None) -> OpenVINOQuantizer:
        """Replace the mode's global config (an extension for :mod:`lowering.backends`' registry).

        >>> q = OpenVINOQuantizer().set_global(get_openvino_quantization_config("int8_mixed"))
        >>> q.global_config.input_activation.dtype
        torch.uint8
        """
        return self._set_global(quantization_config)

    # --- the reference's configuration API ---------------------------------------------------

    def set_ignored_scope(
        self,
        names: Sequence[str] | None = None,
        patterns: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        subgraphs: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
        validate: bool = True,
    ) -> None:
        """Exclude nodes from quantization: the reference's ignored scope, by FX node names.

        ``names``: node names (``"linear_1"``); ``patterns``: regular expressions
        matched (``re.fullmatch``) against node names; ``types``: operator names
        (``"linear"``, ``"conv2d"``, ``"matmul"``; ``"aten.linear.default"`` works
        too); ``subgraphs``: ``(inputs, outputs)`` name lists, every node on a path
        from an input to an output is ignored. An ignored node's inputs are not
        quantized for it, so it runs in float. With ``validate=True`` an entry that
        matches nothing raises :class:`~pt2e.errors.QuantizationConfigError` when
        the model is annotated. Calling it again replaces the scope, as in the reference.

        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> gm = torch.export.export(m, (torch.randn(1, 4),)).module()
        >>> q = OpenVINOQuantizer()
        >>> q.set_ignored_scope(names=["linear_1"])
        >>> print(q.report(gm))
        OpenVINOQuantizer: 1 compute op(s) stay float
          linear_1 (aten.linear.default in '1'): in the ignored scope (names: 'linear_1')
        >>> q.set_ignored_scope(names=["fc9"])
        >>> q.report(gm)
        Traceback (most recent call last):
        ...
        pt2e.errors.QuantizationConfigError: OpenVINOQuantizer.set_ignored_scope: names 'fc9' matched no node of the model; use FX node names of the exported graph (e.g. 'linear', 'linear_1'), or pass validate=False
        """
        scope: dict[str, Any] = {}
        for field, value in (("names", names), ("patterns", patterns), ("types", types)):
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ArgumentTypeError(
                    f"OpenVINOQuantizer.set_ignored_scope: {field} must be a list of str, got {value!r}"
                )
            if field == "patterns":
                for p in value:
                    try:
                        re.compile(p)
                    except re.error as e:
                        raise ArgumentValueError(
                            f"OpenVINOQuantizer.set_ignored_scope: pattern {p!r} is not a regular "
                            f"expression ({e})"
                        ) from None
            scope[field] = list(value)
        if subgraphs is not None:
            pairs = []
            for sub in subgraphs:
                if not (isinstance(sub, (tuple, list)) and len(sub) == 2):
                    raise ArgumentTypeError(
                        "OpenVINOQuantizer.set_ignored_scope: each subgraph is a pair "
                        f"(input names, output names), got {sub!r}"
                    )
                pairs.append((list(sub[0]), list(sub[1])))
            scope["subgraphs"] = pairs
        scope["validate"] = bool(validate)
        self.ignored_scope = scope

    def _resolve_ignored(self, model: GraphModule) -> dict[str, str]:
        """``{node name: reason}`` for the ignored scope on ``model``; validates it."""
        scope = self.ignored_scope
        nodes = [n for n in model.graph.nodes if n.op == "call_function"]
        by_name = {n.name: n for n in model.graph.nodes}
        found: dict[str, str] = {}
        unmatched: list[str] = []
        for name in scope.get("names", []):
            if name in by_name:
                found[name] = f"names: '{name}'"
            else:
                unmatched.append(f"names '{name}'")
        for pattern in scope.get("patterns", []):
            hits = [n.name for n in nodes if re.fullmatch(pattern, n.name)]
            found.update({h: f"patterns: '{pattern}'" for h in hits})
            if not hits:
                unmatched.append(f"patterns '{pattern}'")
        for type_name in scope.get("types", []):
            hits = [n.name for n in nodes if type_name in (_op_name(n), str(n.target))]
            found.update({h: f"types: '{type_name}'" for h in hits})
            if not hits:
                unmatched.append(f"types '{type_name}'")
        for inputs, outputs in scope.get("subgraphs", []):
            missing = [x for x in [*inputs, *outputs] if x not in by_name]
            if missing:
                unmatched.append(f"subgraphs {missing}")
                continue
            for h in _between([by_name[i] for i in inputs], [by_name[o] for o in outputs]):
                found[h.name] = f"subgraph {inputs} -> {outputs}"
        if unmatched and scope.get("validate", True):
            examples = ", ".join(f"'{n.name}'" for n in nodes[:2] if n.name)
            raise QuantizationConfigError(
                f"OpenVINOQuantizer.set_ignored_scope: {'; '.join(unmatched)} matched no node of the "
                f"model; use FX node names of the exported graph (e.g. {examples}), or pass validate=False"
            )
        return found

    # --- annotation ---------------------------------------------------------------------------

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate ``model`` in place for OpenVINO (ignored-scope nodes stay float and unannotated)."""
        self._ignored_nodes = self._resolve_ignored(model)
        by_name = {n.name: n for n in model.graph.nodes}
        mark_annotated(by_name[name] for name in self._ignored_nodes)
        super().annotate(model)
        self._apply_overflow_fix(model)
        # claimed only so this quantizer's patterns skip them: a later quantizer may take them
        for name in self._ignored_nodes:
            if not is_valid_annotation(get_annotation(by_name[name])):
                clear_annotation(by_name[name])
        reasons = {n: f"in the ignored scope ({why})" for n, why in self._ignored_nodes.items()}
        self.unquantized_ops = [
            _replace_reason(op, reasons[op.node]) if op.node in reasons else op
            for op in self.unquantized_ops
        ]
        return model

    def _apply_overflow_fix(self, model: GraphModule) -> None:
        if self.overflow_fix == "disable":
            return
        if self.overflow_fix == "enable":
            chosen = [n for n in model.graph.nodes if n.op == "call_function" and n.target in _OVERFLOW_FIX_OPS]
        else:  # NNCF's rule: the first convs met walking forward from each model input
            chosen, seen = [], set()
            queue = [n for n in model.graph.nodes if n.op == "placeholder"]
            while queue:
                node = queue.pop(0)
                for user in node.users:
                    if user in seen:
                        continue
                    seen.add(user)
                    if user.op == "call_function" and user.target in CONV_OPS and _full_weight(user):
                        chosen.append(user)
                    else:
                        queue.append(user)
        for node in chosen:
            ann, weight = get_annotation(node), node.args[1]
            if ann is not None and isinstance(weight, Node) and _full_weight(node):
                ann.input_qspec_map[weight] = half_range_weight(ann.input_qspec_map[weight])

    def reasons(self) -> dict[frozenset[Any], str]:
        reasons = dict(self.float_reasons)
        if self.mode in WEIGHT_ONLY_MODES:
            reasons[MATMUL_OPS] = f"{self.mode.name} quantizes conv/linear weights only"
        return reasons

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """No rewrite is needed before annotation (the reference's hook, kept for compatibility)."""
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check after annotation."""


def _full_weight(node: Node) -> bool:
    """Whether ``node``'s weight is annotated with a full-range 8-bit symmetric int8 spec."""
    ann = get_annotation(node)
    weight = node.args[1] if len(node.args) > 1 else None
    return (ann is not None and isinstance(weight, Node)
            and _is_full_int8_weight(ann.input_qspec_map.get(weight)))


def _replace_reason(op: Any, reason: str) -> Any:
    return dataclasses.replace(op, reason=reason)


def _between(inputs: Iterable[Node], outputs: Iterable[Node]) -> list[Node]:
    """Nodes on a path from one of ``inputs`` to one of ``outputs`` (both ends included)."""
    forward: set[Node] = set()
    stack = list(inputs)
    while stack:
        n = stack.pop()
        if n not in forward:
            forward.add(n)
            stack.extend(n.users)
    backward: set[Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in backward:
            backward.add(n)
            stack.extend(n.all_input_nodes)
    return [n for n in forward & backward if n.op == "call_function"]
