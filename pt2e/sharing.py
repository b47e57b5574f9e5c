"""Group annotated edges and outputs that must share one observer.

Every annotated *edge* ``(producer, consumer)`` and every annotated *node output*
is a key. Two keys share an observer (and so, after convert, identical qparams)
when:

1. one carries ``SharedQuantizationSpec(other_key)`` (explicit sharing), or
2. they observe the same tensor with equal attributes (implicit sharing): an input
   edge ``(a, n)`` joins ``a``'s output group, and the other consumers' edges of
   ``a``, when dtype, range, qscheme, axis (and fixed scale/zero point) agree and
   ``n``'s annotation allows implicit sharing.

This is a union-find over the keys. Worked example: ``cat([conv1, conv2])``
annotated, as a backend that keeps ``cat`` in int8 would, with::

    conv1:          uint8 spec A           (output)
    conv2:          uint8 spec A           (output)
    (conv1, cat):   uint8 spec A           -> implicit: joins conv1's group
    (conv2, cat):   Shared((conv1, cat))   -> explicit: joins (conv1, cat)'s group
                                              implicit: its effective spec is A, equal to
                                              conv2's output spec, so conv2 joins too
    cat:            Shared((conv1, cat))   -> explicit

All five keys land in one group: one observer sees both conv outputs, and the
converted ``cat`` reads two int8 tensors with the same scale, so a backend can
concatenate the integers directly. The group's observer is built from the first
non-shared spec among its members in graph order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from observers import DerivedObserverOrFakeQuantize, FixedQParamsFakeQuantize, FixedQParamsObserver
from observers.facts import int_range, storage_dtype

from .errors import AnnotationError
from .graph import describe_node
from .quantizer.annotation import get_annotation
from .quantizer.spec import EdgeOrNode, SpecKind, spec_kind

__all__ = ["collect_qspecs", "SharingGroups", "create_observers", "describe_key"]

_COMPARED_ATTRS = ("dtype", "is_dynamic", "quant_min", "quant_max", "qscheme", "ch_axis",
                   "scale", "zero_point")


def describe_key(key: EdgeOrNode) -> str:
    """Human-readable name of an edge or node key for error messages."""
    if isinstance(key, tuple):
        return f"input edge '{key[0].name}' -> '{key[1].name}'"
    return f"output of {describe_node(key)}"


def collect_qspecs(model: GraphModule) -> dict[EdgeOrNode, Any]:
    """Every annotated edge and node output with its spec, in graph order.

    Raises :class:`AnnotationError` for an input annotation that names a node which
    is not an input of the annotated node, or a spec that is not a quantization spec.
    """
    specs: dict[EdgeOrNode, Any] = {}
    for node in model.graph.nodes:
        ann = get_annotation(node)
        if ann is None:
            continue
        _refuse_tensor_kwargs(node)
        inputs = node.all_input_nodes
        for inp, spec in (getattr(ann, "input_qspec_map", None) or {}).items():
            if not isinstance(inp, Node) or inp not in inputs:
                got = inp.name if isinstance(inp, Node) else repr(inp)
                raise AnnotationError(
                    f"the quantizer annotated input '{got}' of {describe_node(node)}, but "
                    f"'{got}' is not an input of that node (its inputs are "
                    f"{[i.name for i in inputs]}); key input_qspec_map by the producer node "
                    "that feeds the annotated node"
                )
            if spec is not None:
                _check_spec(spec, (inp, node))
                specs[(inp, node)] = spec
        out = getattr(ann, "output_qspec", None)
        if out is not None:
            _check_spec(out, node)
            specs[node] = out
    return specs


def _refuse_tensor_kwargs(node: Node) -> None:
    """An annotated node must take its tensors positionally, as torchao requires:
    prepare observes ``args`` only, so a tensor keyword argument (``out=``) would
    silently stay float."""
    for name, value in node.kwargs.items():
        found: list[Node] = []
        torch.fx.node.map_arg(value, found.append)
        if found:
            raise AnnotationError(
                f"{describe_node(node)} is annotated but takes the tensor '{found[0].name}' as "
                f"its keyword argument '{name}=', which prepare cannot observe (torchao refuses "
                "it too); pass tensors positionally (export the functional form of the op, "
                "without out=), or leave this node unannotated"
            )


def _check_spec(spec: Any, key: EdgeOrNode) -> None:
    try:
        spec_kind(spec)
    except ValueError as e:
        raise AnnotationError(f"{describe_key(key)}: {e}") from None


def _same(a: Any, b: Any) -> bool:
    return all(
        getattr(a, attr, None) == getattr(b, attr, None)
        for attr in _COMPARED_ATTRS
        if hasattr(a, attr) or hasattr(b, attr)
    )


class SharingGroups:
    """Union-find over annotated keys; see the module docstring for the rules.

    >>> import torch
    >>> from observers import MinMaxObserver
    >>> from pt2e.quantizer import QuantizationSpec
    >>> gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    >>> x, relu = list(gm.graph.nodes)[:2]
    >>> a = QuantizationSpec(dtype=torch.uint8, observer_or_fake_quant_ctr=MinMaxObserver)
    >>> groups = SharingGroups({x: a, (x, relu): a, relu: a})
    >>> groups.find((x, relu)) is groups.find(x), groups.find(relu) is groups.find(x)
    (True, False)
    """

    def __init__(self, specs: dict[EdgeOrNode, Any]):
        self.specs = specs
        self.parent: dict[EdgeOrNode, EdgeOrNode] = {k: k for k in specs}
        # the concrete (non-shared) spec that decides each group's observer
        self.rep: dict[EdgeOrNode, Any] = {
            k: (None if spec_kind(s) is SpecKind.SHARED else s) for k, s in specs.items()
        }
        for key, spec in specs.items():
            if isinstance(key, tuple) and _allows_implicit_sharing(key[1]):
                self._share_implicitly(key, spec)
            if spec_kind(spec) is SpecKind.SHARED:
                target = spec.edge_or_node
                if target not in self.parent:
                    raise AnnotationError(
                        f"{describe_key(key)} shares qparams with {describe_key(target)}, which "
                        "has no quantization spec; annotate that edge/output too, or give this "
                        "one its own QuantizationSpec"
                    )
                self.union(target, key, explicit=True)

    def find(self, key: EdgeOrNode) -> EdgeOrNode:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def effective_spec(self, key: EdgeOrNode) -> Any:
        """The concrete spec ``key`` resolves to (following shared specs), or ``None``."""
        seen = set()
        while True:
            rep = self.rep[self.find(key)]
            if rep is not None:
                return rep
            spec = self.specs[key]
            if spec_kind(spec) is not SpecKind.SHARED or key in seen:
                return None
            seen.add(key)
            key = spec.edge_or_node

    def union(self, parent: EdgeOrNode, child: EdgeOrNode, *, explicit: bool = False) -> None:
        rp, rc = self.find(parent), self.find(child)
        if rp == rc:
            return
        a, b = self.rep[rp], self.rep[rc]
        if explicit and a is not None and b is not None and not _same_dtype_range(a, b):
            raise AnnotationError(
                f"conflicting specs: {describe_key(child)} is shared with {describe_key(parent)}, "
                f"but one is quantized as {_fmt(a)} and the other as {_fmt(b)}; one observer "
                "cannot serve both. Give both the same dtype and range, or drop the sharing"
            )
        self.parent[rc] = rp
        if a is None:
            self.rep[rp] = b

    def _share_implicitly(self, edge: tuple[Node, Node], spec: Any) -> None:
        mine = self.effective_spec(edge) if spec_kind(spec) is SpecKind.SHARED else spec
        if mine is None:
            return
        producer, consumer = edge
        # other consumers first, then the producer's output (same order as torchao,
        # which avoids cycles when a producer feeds several consumers)
        others: list[EdgeOrNode] = [(producer, u) for u in producer.users if u is not consumer]
        for other in [*others, producer]:
            if other in self.parent:
                theirs = self.effective_spec(other)
                if theirs is not None and _same(theirs, mine):
                    self.union(other, edge)

    def groups(self) -> dict[EdgeOrNode, list[EdgeOrNode]]:
        """Root key -> member keys, in first-seen order."""
        out: dict[EdgeOrNode, list[EdgeOrNode]] = {}
        for key in self.specs:
            out.setdefault(self.find(key), []).append(key)
        return out


def _allows_implicit_sharing(node: Node) -> bool:
    ann = get_annotation(node)
    return bool(getattr(ann, "allow_implicit_sharing", True))


def _same_dtype_range(a: Any, b: Any) -> bool:
    return all(getattr(a, f, None) == getattr(b, f, None)
               for f in ("dtype", "quant_min", "quant_max", "is_dynamic"))


def _fmt(spec: Any) -> str:
    return (f"{getattr(spec, 'dtype', '?')} [{getattr(spec, 'quant_min', None)}, "
            f"{getattr(spec, 'quant_max', None)}]")


def _ctor_class(ctr: Any) -> Any:
    """The class behind an observer constructor (a class, ``with_args`` wrapper or partial)."""
    for _ in range(8):
        if isinstance(ctr, type):
            return ctr
        if hasattr(ctr, "p"):  # PartialWrapper (ours and torchao's)
            ctr = ctr.p
        elif hasattr(ctr, "func"):  # functools.partial
            ctr = ctr.func
        else:
            break
    return ctr


def _instantiate(ctr: Any, kwargs: dict[str, Any]) -> Any:
    if hasattr(ctr, "with_args"):
        return ctr.with_args(**kwargs)()
    return ctr(**kwargs)


def _observed_kwargs(spec: Any) -> dict[str, Any]:
    kwargs = {
        "dtype": spec.dtype,
        "quant_min": spec.quant_min,
        "quant_max": spec.quant_max,
        "qscheme": spec.qscheme,
        "is_dynamic": spec.is_dynamic,
    }
    cls = _ctor_class(spec.observer_or_fake_quant_ctr)
    # only per-channel observers take ch_axis (same convention as torchao)
    # and a spec without ch_axis leaves the observer's default axis in place
    if "PerChannel" in getattr(cls, "__name__", "") and spec.ch_axis is not None:
        kwargs["ch_axis"] = spec.ch_axis
    return kwargs


def _dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    bounds = int_range(storage_dtype(dtype))
    if bounds is None:  # FixedQParamsQuantizationSpec only takes integer dtypes
        raise AnnotationError(f"fixed qparams need an integer dtype, got dtype={dtype}")
    return bounds


def create_observers(
    groups: SharingGroups,
    is_qat: bool,
) -> dict[EdgeOrNode, Any]:
    """One observer (PTQ) or fake quantizer (QAT) per group; map every key to its group's."""
    obs_for_root: dict[EdgeOrNode, Any] = {}
    result: dict[EdgeOrNode, Any] = {}
    members = groups.groups()
    # derived groups read other groups' observers, so build them last
    ordered = sorted(members, key=lambda r: _kind_or_none(groups.rep[r]) is SpecKind.DERIVED)
    for root in ordered:
        spec = groups.rep[root]
        if spec is None:
            raise AnnotationError(
                f"{describe_key(root)} and the keys sharing with it only reference each other "
                "through SharedQuantizationSpec; give one of them a concrete QuantizationSpec"
            )
        kind = spec_kind(spec)
        if kind is SpecKind.OBSERVED:
            obs = _instantiate(spec.observer_or_fake_quant_ctr, _observed_kwargs(spec))
        elif kind is SpecKind.FIXED:
            lo, hi = _dtype_range(spec.dtype)
            fixed = FixedQParamsObserver.with_args(
                scale=spec.scale,
                zero_point=spec.zero_point,
                dtype=spec.dtype,
                qscheme=spec.qscheme or torch.per_tensor_affine,
                quant_min=lo if spec.quant_min is None else spec.quant_min,
                quant_max=hi if spec.quant_max is None else spec.quant_max,
            )
            obs = FixedQParamsFakeQuantize.with_args(observer=fixed)() if is_qat else fixed()
        else:  # DERIVED
            sources = []
            for src in spec.derived_from:
                if src not in groups.parent:
                    raise AnnotationError(
                        f"a DerivedQuantizationSpec on {describe_key(root)} derives from "
                        f"{describe_key(src)}, which has no quantization spec; annotate it"
                    )
                sources.append(obs_for_root[groups.find(src)])
            obs = DerivedObserverOrFakeQuantize(
                dtype=spec.dtype,
                obs_or_fqs=sources,
                derive_qparams_fn=spec.derive_qparams_fn,
                quant_min=spec.quant_min,
                quant_max=spec.quant_max,
                qscheme=spec.qscheme,
                ch_axis=spec.ch_axis,
            )
        obs_for_root[root] = obs
    for key in groups.specs:
        result[key] = obs_for_root[groups.find(key)]
    return result


def _kind_or_none(spec: Any) -> SpecKind | None:
    return None if spec is None else spec_kind(spec)
