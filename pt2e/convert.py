"""Replace each observer with PyTorch's standard quantize/dequantize ops.

Static per-tensor (scalar qparams)::

    x -> obs -> y    becomes    x -> quantize_per_tensor(x, s, zp, qmin, qmax, dtype)
                                  -> dequantize_per_tensor(..., s, zp, qmin, qmax, dtype) -> y

Per-channel (weights): ``quantize_per_channel`` / ``dequantize_per_channel`` with
scale and zero point read from ``get_attr`` buffers. Dynamic: ``choose_qparams``
computes scale and zero point at run time and feeds the ``.tensor`` overloads.
A float observer (``PlaceholderObserver(dtype=torch.float)``, ``NoopObserver``) is
simply removed.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from observers.affine import AffineQuantizedObserverBase
from observers.facts import FLOAT8_DTYPES, PER_CHANNEL_QSCHEMES, int_range
from observers.granularity import ZeroPointDomain

from .affine_ops import AFFINE
from .errors import ObserverStateError, UnsupportedOperationError
from .fold import constant_value
from .graph import CUSTOM_KEY, USER_META_KEYS, copy_meta, describe_node, register_constant
from .ops import CHOOSE_QPARAMS_OPS, QD, is_dequantize, is_quantize, storage_dtype
from .prepare import is_observer_module
from .quantizer.annotation import get_annotation, is_valid_annotation

__all__ = [
    "replace_observers",
    "replace_affine_observer",
    "duplicate_dequantize_per_user",
    "port_dequantize_metadata",
    "observer_qparams",
]

# the storage dtypes quantized_decomposed's quantize/dequantize ops take
_INT_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.uint16}


def _range(obs: Any, dtype: torch.dtype) -> tuple[int, int]:
    lo, hi = int_range(dtype) or (0, 0)  # dtype is one of _INT_DTYPES or float8 (range given)
    qmin = getattr(obs, "quant_min", None)
    qmax = getattr(obs, "quant_max", None)
    return (lo if qmin is None else int(qmin), hi if qmax is None else int(qmax))


def _where(node: Node) -> str:
    observed = node.args[0]
    return f"observer '{node.target}' (observing {describe_node(observed)})"  # type: ignore[arg-type]


def observer_qparams(obs: Any, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """``obs.calculate_qparams()``, with a clear error when the observer saw no data."""
    inner = getattr(obs, "activation_post_process", obs)  # fake quantizers wrap an observer
    mn, mx = getattr(inner, "min_val", None), getattr(inner, "max_val", None)
    if isinstance(mn, torch.Tensor) and isinstance(mx, torch.Tensor):
        empty = mn.numel() == 0 or bool(torch.isinf(mn).all()) and bool(torch.isinf(mx).all())
        skipped = getattr(inner, "nonfinite_seen", 0)
        if empty and skipped:
            raise ObserverStateError(
                f"{_where(node)} saw only NaN/Inf ({skipped} value(s), skipped) and no finite "
                "data, so it has no quantization parameters. Check the calibration inputs and "
                "the layers before it for overflow or invalid values"
            )
        if empty:
            raise ObserverStateError(
                f"{_where(node)} has seen no data, so it has no quantization parameters. "
                "Run calibration data through the prepared model (model(*example_inputs)) "
                "before convert_pt2e"
            )
    try:
        scale, zero_point = obs.calculate_qparams()
    except ObserverStateError as e:
        raise ObserverStateError(f"{_where(node)}: {e}") from None
    return scale, zero_point


def _feed_constant(model: GraphModule, node: Node, obs: Any) -> None:
    """Let a weight observer see its weight if calibration never ran it (dynamic flows)."""
    inner = getattr(obs, "activation_post_process", obs)
    mn = getattr(inner, "min_val", None)
    if not isinstance(mn, torch.Tensor) or (mn.numel() and not bool(torch.isinf(mn).all())):
        return
    value = constant_value(model, node.args[0])  # type: ignore[arg-type]
    if value is not None:
        with torch.no_grad():
            obs(value)


def _replace_one(model: GraphModule, node: Node, obs: Any) -> None:
    graph = model.graph
    x = node.args[0]
    assert isinstance(x, Node)  # internal: prepare calls every observer on a node's value
    _feed_constant(model, node, obs)
    dtype = storage_dtype(obs.dtype)
    is_dynamic = bool(getattr(obs, "is_dynamic", False))
    dq_kwargs: dict[str, Any] = {}
    val = x.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dtype not in (torch.float32,) and val.is_floating_point():
        dq_kwargs = {"out_dtype": val.dtype}

    with graph.inserting_before(node):
        if dtype in FLOAT8_DTYPES and not is_dynamic and _per_channel_float8(model, node, obs):
            return
        if (dtype in _INT_DTYPES or dtype in FLOAT8_DTYPES) and not is_dynamic:
            qmin, qmax = _range(obs, dtype)
            scale, zp = observer_qparams(obs, node)
            if getattr(obs, "qscheme", None) in PER_CHANNEL_QSCHEMES:
                axis = int(obs.ch_axis)
                s_node = graph.get_attr(register_constant(model, f"{node.target}_scale", scale))
                z_node = graph.get_attr(register_constant(model, f"{node.target}_zero_point", zp))
                copy_meta(s_node, node)
                copy_meta(z_node, node)
                qargs: tuple[Any, ...] = (s_node, z_node, axis, qmin, qmax, dtype)
                q_op, dq_op = QD.quantize_per_channel.default, QD.dequantize_per_channel.default
            else:
                qargs = (float(scale), int(zp), qmin, qmax, dtype)
                q_op, dq_op = QD.quantize_per_tensor.default, QD.dequantize_per_tensor.default
            q = graph.call_function(q_op, (x, *qargs))
            dq = graph.call_function(dq_op, (q, *qargs), dq_kwargs)
        elif is_dynamic and dtype in (torch.uint8, torch.int8):
            qmin, qmax = _range(obs, dtype)
            eps = float(getattr(obs, "eps", torch.finfo(torch.float32).eps))
            symmetric = getattr(obs, "qscheme", None) == torch.per_tensor_symmetric
            choose = QD.choose_qparams_symmetric.tensor if symmetric else QD.choose_qparams.tensor
            cq = graph.call_function(choose, (x, qmin, qmax, eps, dtype))
            s_node = graph.call_function(operator.getitem, (cq, 0))
            z_node = graph.call_function(operator.getitem, (cq, 1))
            qargs = (s_node, z_node, qmin, qmax, dtype)
            q = graph.call_function(QD.quantize_per_tensor.tensor, (x, *qargs))
            dq = graph.call_function(QD.dequantize_per_tensor.tensor, (q, *qargs), dq_kwargs)
            for n in (cq, s_node, z_node):
                copy_meta(n, node)
        elif obs.dtype == torch.float16 and not is_dynamic:
            convert = QD.convert_element_type.no_fuse
            q = graph.call_function(convert, (x, torch.float16))
            dq = graph.call_function(convert, (q, torch.float32))
        else:
            node.replace_all_uses_with(x)
            graph.erase_node(node)
            return
    copy_meta(q, node)
    copy_meta(dq, node)
    node.replace_all_uses_with(dq)
    graph.erase_node(node)


def _per_channel_float8(model: GraphModule, node: Node, obs: Any) -> bool:
    """Per-channel float8: ``pt2e`` affine ops with one block per channel, no zero point.

    ``quantized_decomposed.dequantize_per_channel`` subtracts an int64 zero point,
    which float8 tensors cannot do (torchao's convert emits it and fails at run
    time). Per-tensor float8 keeps torchao's ``quantize_per_tensor`` pair.
    """
    if getattr(obs, "qscheme", None) not in PER_CHANNEL_QSCHEMES:
        return False
    x = node.args[0]
    val = x.meta.get("val") if isinstance(x, Node) else None
    if not isinstance(val, torch.Tensor):
        raise UnsupportedOperationError(
            f"{_where(node)}: per-channel float8 needs the observed value's shape "
            "(node.meta['val']); export the model with torch.export before prepare_pt2e."
        )
    scale, _ = observer_qparams(obs, node)
    block = [1 if i == int(obs.ch_axis) % val.dim() else s for i, s in enumerate(val.shape)]
    qmin, qmax = _range(obs, obs.dtype)
    s_node = model.graph.get_attr(register_constant(model, f"{node.target}_scale", scale))
    args = (block, s_node, None, obs.dtype, qmin, qmax)
    q = model.graph.call_function(AFFINE.quantize_affine.default, (x, *args))
    dq = model.graph.call_function(AFFINE.dequantize_affine.default, (q, *args),
                                   {"output_dtype": val.dtype})
    for n in (s_node, q, dq):
        copy_meta(n, node)
    node.replace_all_uses_with(dq)
    model.graph.erase_node(node)
    return True


def replace_affine_observer(model: GraphModule, node: Node, obs: AffineQuantizedObserverBase) -> None:
    """Replace the call of affine observer ``obs`` at ``node`` with ``pt2e`` affine ops.

    Static: ``quantize_affine -> dequantize_affine`` with per-block scale and zero
    point registered as buffers. Dynamic (``obs.is_dynamic``):
    ``choose_qparams_affine`` computes them at run time from the value itself.
    """
    x = node.args[0]
    if not isinstance(x, Node):
        raise ObserverStateError(f"observer '{node.target}' does not observe a graph value.")
    if obs.block_size is None:  # never ran: a weight in a dynamic flow still has its value
        value = constant_value(model, x)
        if isinstance(value, torch.Tensor):
            obs(value)
    if obs.block_size is None or obs.original_dtype is None:
        raise ObserverStateError(
            f"{_where(node)} has seen no data, so its block size is unknown. Run calibration "
            "data through the prepared model (model(*example_inputs)) before convert_pt2e."
        )
    if obs.zero_point_domain is ZeroPointDomain.FLOAT:
        raise UnsupportedOperationError(
            f"{_where(node)}: zero_point_domain=ZeroPointDomain.FLOAT (tinygemm's float zero "
            "point) has no quantize/dequantize op here; use ZeroPointDomain.INT, or the eager "
            "quantize_(model, Int4WeightOnlyConfig(...)) flow for tinygemm int4 weights."
        )
    graph = model.graph
    block = list(obs.block_size)
    qrange = (obs.quant_min, obs.quant_max)
    new: list[Node] = []
    scale: Node
    zero_point: Node | None = None
    with graph.inserting_before(node):
        if obs.is_dynamic:
            choose = graph.call_function(AFFINE.choose_qparams_affine.default, (
                x, obs.mapping_type.name, block, obs.target_dtype, *qrange, obs.eps,
                obs.scale_dtype, obs.zero_point_dtype,
            ))
            scale = graph.call_function(operator.getitem, (choose, 0))
            zero_point = graph.call_function(operator.getitem, (choose, 1))
            new += [choose, scale, zero_point]
        else:
            try:
                s_val, z_val = obs.calculate_qparams()
            except (ObserverStateError, UnsupportedOperationError) as e:
                raise type(e)(f"{_where(node)}: {e}") from None
            scale = graph.get_attr(register_constant(model, f"{node.target}_scale", s_val))
            new.append(scale)
            if z_val is not None:
                zero_point = graph.get_attr(
                    register_constant(model, f"{node.target}_zero_point", z_val)
                )
                new.append(zero_point)
        q = graph.call_function(AFFINE.quantize_affine.default, (
            x, block, scale, zero_point, obs.target_dtype, *qrange,
        ))
        dq = graph.call_function(
            AFFINE.dequantize_affine.default,
            (q, block, scale, zero_point, obs.target_dtype, *qrange),
            {"output_dtype": obs.original_dtype},
        )
    for n in (*new, q, dq):
        copy_meta(n, node)
    node.replace_all_uses_with(dq)
    graph.erase_node(node)


def replace_observers(model: GraphModule) -> int:
    """Replace every observer call in ``model`` with q/dq ops; return how many were replaced.

    An observer that defines its own ``convert(model, observer_node)`` (the affine
    observers, a backend's custom int4/int2 scheme) converts itself, as in torchao.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    replaced = 0
    for node in list(model.graph.nodes):
        if node.op != "call_module":
            continue
        obs = modules.get(str(node.target))
        if not is_observer_module(obs):
            continue
        own_convert = getattr(obs, "convert", None)
        if callable(own_convert):
            own_convert(model, node)
        else:
            _replace_one(model, node, obs)
        replaced += 1
    for name in {str(n) for n in modules if is_observer_module(modules[n]) and n}:
        if "." not in name and hasattr(model, name):
            delattr(model, name)
    return replaced


def _is_dynamic_dq(node: Node) -> bool:
    return node.target == QD.dequantize_per_tensor.tensor and any(
        isinstance(a, Node) and a.target is operator.getitem for a in node.args[1:3]
    )


def port_dequantize_metadata(model: GraphModule) -> int:
    """Port metadata onto the quantize/dequantize nodes convert inserted; return how
    many nodes received some.

    * A dequantize of a constant (weight) takes its consumer's module metadata:
      backends' module filters read the module stack, which a weight lacks. Its
      provenance (``from_node``, the debug handle) stays the weight's: the
      dequantize stands for the weight, not for the operator reading it.
    * The user's tags (:data:`~pt2e.graph.USER_META_KEYS`, e.g.
      ``quantization_tag``) follow torchao's ``PortNodeMetaForQDQ``: for each node
      with a valid annotation, the dequantize on each quantized input edge (with
      ``choose_qparams`` and quantize too when the edge is dynamic) takes the
      node's tags, and so does the quantize on its quantized output; a quantize of
      a constant takes the constant's.
    """
    ported: set[Node] = set()
    for dq in model.graph.nodes:
        if is_dequantize(dq) and "nn_module_stack" not in dq.meta and len(dq.users) == 1:
            own = {k: dq.meta[k] for k in ("from_node", CUSTOM_KEY) if k in dq.meta}
            copy_meta(dq, next(iter(dq.users)))
            dq.meta.update(own)
            ported.add(dq)
    for node in model.graph.nodes:
        ann = get_annotation(node)
        if ann is None or not is_valid_annotation(ann):
            continue
        for input_node, qspec in (getattr(ann, "input_qspec_map", None) or {}).items():
            if qspec is not None:
                ported.update(_port_user_meta_to_input(node, input_node))
        if getattr(ann, "output_qspec", None) is not None:
            q = next((u for u in node.users if is_quantize(u)), None)
            if q is not None:
                _tag(q, node, ported)
    return len(ported)


def _tag(dst: Node, src: Node, ported: set[Node]) -> None:
    if any(k in src.meta for k in USER_META_KEYS):
        copy_meta(dst, src, keys=USER_META_KEYS)
        ported.add(dst)


def _traces_back_to(dq: Node, source: Node) -> bool:
    """Whether only convert's q/dq ops lie between ``source`` and ``dq``."""
    cur: Any = dq
    while isinstance(cur, Node) and (is_quantize(cur) or is_dequantize(cur)):
        cur = cur.args[0]
    return cur is source


def _port_user_meta_to_input(node: Node, input_node: Node) -> set[Node]:
    ported: set[Node] = set()
    # cat reads its inputs from a list: look inside it (torchao looks at top-level args only)
    args = [a for a in node.all_input_nodes if is_dequantize(a) and _traces_back_to(a, input_node)]
    for dq in args[:1]:
        _tag(dq, node, ported)
        q = dq.args[0]
        if not isinstance(q, Node) or not is_quantize(q):
            continue
        scale = q.args[1]
        if isinstance(scale, Node) and scale.target is operator.getitem:
            choose = scale.args[0]
            if isinstance(choose, Node) and choose.target in CHOOSE_QPARAMS_OPS:  # dynamic
                _tag(q, node, ported)
                _tag(choose, node, ported)
        elif isinstance(q.args[0], Node) and q.args[0].op == "get_attr":
            _tag(q, q.args[0], ported)
    return ported


def duplicate_dequantize_per_user(model: GraphModule) -> int:
    """Give each annotated consumer of a shared dequantize its own copy.

    Backends match ``dq -> op -> q`` per operator; a dequantize shared by two
    annotated operators would tie their patterns together. Dynamic
    ``choose_qparams`` chains are left shared, as torchao does. Returns the number
    of copies made.
    """
    graph = model.graph
    made = 0
    for dq in list(graph.nodes):
        if not is_dequantize(dq) or len(dq.users) < 2 or _is_dynamic_dq(dq):
            continue
        for user in list(dq.users):
            if len(dq.users) == 1:
                break
            # as torchao: only a user with a valid annotation (one that asks for a spec)
            ann = get_annotation(user)
            if ann is None or not is_valid_annotation(ann):
                continue
            with graph.inserting_after(dq):
                copy = graph.node_copy(dq)
            copy_meta(copy, dq)  # node_copy shares the meta containers; give it its own
            user.replace_input_with(dq, copy)
            made += 1
    return made
