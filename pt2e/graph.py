"""The one place that touches graph nodes the same way in every pass.

Every pass of the pipeline (prepare, convert, weight folding, QAT conv-bn,
batch-norm folding, the reference representation) creates nodes and attributes.
This module is the only one that

* copies node metadata onto a new node (:func:`copy_meta`, two key lists:
  :data:`PROVENANCE_KEYS`, so that a numeric debugger can follow every
  inserted node back to the node it stands for, and :data:`USER_META_KEYS`,
  the user's tags that convert ports to quantize/dequantize nodes as torchao does);
* makes fresh attribute names and registers constants (:func:`fresh_attr_name`,
  :func:`register_constant`, and torchao's spelling :func:`get_new_attr_name_with_prefix`);
* says what kind of operator a node calls (:func:`is_conv_node`,
  :func:`is_conv_transpose_node`) and exports a pattern function to an ATen graph
  (:func:`aten_graph_for_pattern`): the public equivalents of the ``torchao.quantization.pt2e.utils``
  helpers that quantizer code imports;
* reads what a ``get_attr`` node reads (:func:`attr_value`, :func:`get_attr_value`);
* names a node and its module for messages (:func:`module_stack`,
  :func:`module_path`, :func:`describe_node`);
* decodes batch-norm and convolution arguments (:func:`batch_norm_args`,
  :func:`conv_args`);
* removes dead code the way the pipeline needs (:func:`remove_dead_code`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch.fx import GraphModule, Node

from .errors import ArgumentValueError
from .ops import CONV_OPS, CONV_TRANSPOSE_OPS

__all__ = [
    "PROVENANCE_KEYS",
    "USER_META_KEYS",
    "CUSTOM_KEY",
    "DEBUG_HANDLE_KEY",
    "FROM_NODE_KEY",
    "copy_meta",
    "fresh_attr_name",
    "get_new_attr_name_with_prefix",
    "register_constant",
    "is_conv_node",
    "is_conv_transpose_node",
    "aten_graph_for_pattern",
    "attr_value",
    "get_attr_value",
    "module_stack",
    "module_path",
    "qualified_type_name",
    "describe_node",
    "BatchNormArgs",
    "batch_norm_args",
    "ConvArgs",
    "conv_args",
    "remove_dead_code",
]

# torchao's numeric debugger keeps its handle in node.meta["custom"]["numeric_debug_handle"]
CUSTOM_KEY = "custom"
DEBUG_HANDLE_KEY = "numeric_debug_handle"
# torch.fx records where a node came from (a chain of NodeSource) under this key
FROM_NODE_KEY = "from_node"

#: Metadata a new node inherits from the node it replaces or stands for:
#: module stack and source line (for messages and backends' module filters),
#: torch.fx's provenance chain, and the user/debugger ``custom`` dict.
PROVENANCE_KEYS: tuple[str, ...] = ("nn_module_stack", "stack_trace", FROM_NODE_KEY, CUSTOM_KEY)
#: User metadata that torchao's ``PortNodeMetaForQDQ`` ports from an annotated node
#: to the quantize/dequantize nodes of its pattern (torchao also ports ``stack_trace``,
#: which here follows the :data:`PROVENANCE_KEYS` rule instead). Copied only by
#: ``copy_meta(..., keys=USER_META_KEYS)``, never with provenance.
USER_META_KEYS: tuple[str, ...] = ("quantization_tag",)
# what an observer needs besides provenance: it has the same value as the observed node
_VALUE_KEYS = ("val", "tensor_meta")

aten = torch.ops.aten


def copy_meta(
    dst: Node, src: Node, *, value: bool = False, keys: tuple[str, ...] = PROVENANCE_KEYS
) -> None:
    """Copy ``src``'s ``keys`` (by default :data:`PROVENANCE_KEYS`; and with
    ``value=True`` its ``val``/``tensor_meta``) onto ``dst``; keys ``src`` lacks
    are left alone. ``keys=USER_META_KEYS`` copies the user's tags instead.

    >>> import torch
    >>> g = torch.fx.Graph()
    >>> a, b = g.placeholder("a"), g.placeholder("b")
    >>> a.meta.update({"custom": {DEBUG_HANDLE_KEY: 7}, "val": 1.0})
    >>> copy_meta(b, a)
    >>> b.meta["custom"], "val" in b.meta
    ({'numeric_debug_handle': 7}, False)
    >>> b.meta["custom"] is a.meta["custom"]      # a copy: renumbering b leaves a alone
    False
    >>> copy_meta(b, a, value=True)
    >>> b.meta["val"]
    1.0
    >>> a.meta["quantization_tag"] = "block1"
    >>> copy_meta(b, a); "quantization_tag" in b.meta     # not provenance
    False
    >>> copy_meta(b, a, keys=USER_META_KEYS); b.meta["quantization_tag"]
    'block1'
    """
    for k in keys:
        if k in src.meta:
            v = src.meta[k]
            # own containers: a debugger that renumbers one node's handle in place
            # must not renumber every node copied from it
            dst.meta[k] = dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
    if value:
        for k in _VALUE_KEYS:
            if k in src.meta:
                dst.meta[k] = src.meta[k]


def fresh_attr_name(module: torch.nn.Module, stem: str, *, numbered: bool = False) -> str:
    """An attribute name ``module`` does not have yet, derived from ``stem``.

    Dots in ``stem`` become ``_`` (a nested target cannot be a direct attribute).
    ``numbered=False`` tries ``stem``, ``stem_1``, ``stem_2``...; ``numbered=True``
    tries ``stem0``, ``stem1``... and returns the first free one.

    >>> import torch
    >>> m = torch.nn.Module()
    >>> fresh_attr_name(m, "conv.weight_bn_folded")
    'conv_weight_bn_folded'
    >>> m.register_buffer("w", torch.zeros(1))
    >>> fresh_attr_name(m, "w"), fresh_attr_name(m, "_frozen_param", numbered=True)
    ('w_1', '_frozen_param0')
    """
    stem = stem.replace(".", "_")
    if numbered:
        i = 0
        while hasattr(module, f"{stem}{i}"):
            i += 1
        return f"{stem}{i}"
    name, i = stem, 0
    while hasattr(module, name):
        i += 1
        name = f"{stem}_{i}"
    return name


def get_new_attr_name_with_prefix(prefix: str) -> Callable[[torch.nn.Module], str]:
    """torchao's ``get_new_attr_name_with_prefix``: a function giving the first free
    ``prefix<i>`` attribute of a module (:func:`fresh_attr_name` with ``numbered=True``).

    >>> import torch
    >>> m = torch.nn.Module()
    >>> m.register_buffer("scale0", torch.ones(1))
    >>> get_new_attr_name_with_prefix("scale")(m)
    'scale1'
    """

    def new_attr_name(module: torch.nn.Module) -> str:
        return fresh_attr_name(module, prefix, numbered=True)

    return new_attr_name


def is_conv_node(node: Node) -> bool:
    """Whether ``node`` calls an ATen convolution (1-d to 3-d, any padding overload);
    torchao's ``_is_conv_node``.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Conv2d(1, 1, 1), (torch.randn(1, 1, 2, 2),)).module()
    >>> [n.name for n in gm.graph.nodes if is_conv_node(n)]
    ['conv2d']
    """
    return node.op == "call_function" and node.target in CONV_OPS


def is_conv_transpose_node(node: Node) -> bool:
    """Whether ``node`` calls an ATen transposed convolution; torchao's ``_is_conv_transpose_node``.

    >>> import torch
    >>> m = torch.nn.ConvTranspose2d(1, 1, 2)
    >>> gm = torch.export.export(m, (torch.randn(1, 1, 2, 2),)).module()
    >>> [n.name for n in gm.graph.nodes if is_conv_transpose_node(n)]
    ['conv_transpose2d']
    """
    return node.op == "call_function" and node.target in CONV_TRANSPOSE_OPS


def aten_graph_for_pattern(
    pattern: Callable[..., Any],
    example_inputs: tuple[Any, ...],
    is_cuda: bool = False,
    **kwargs: Any,
) -> GraphModule:
    """Export ``pattern`` (a function of tensors) to an ATen graph to match or replace with;
    torchao's ``_get_aten_graph_module_for_pattern`` (same arguments).

    ``kwargs`` are passed to ``pattern`` as keyword inputs. The graph has no
    ``_guards_fn`` call and no unused ``copy_`` back into mutated inputs: a pattern
    matches computation, not export's bookkeeping.

    >>> import torch
    >>> gm = aten_graph_for_pattern(lambda x, w: torch.relu(x @ w), (torch.randn(2, 2),) * 2)
    >>> [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    ['aten.matmul.default', 'aten.relu.default']
    """
    if is_cuda:
        example_inputs = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in example_inputs)

    class _Pattern(torch.nn.Module):
        def forward(self, *args: Any, **kw: Any) -> Any:
            return pattern(*args, **kw)

    gm = cast(GraphModule, torch.export.export(_Pattern(), example_inputs, kwargs, strict=True).module())
    for node in list(gm.graph.nodes):
        unused_copy = node.target == aten.copy_.default and not node.users
        if unused_copy or (node.op == "call_module" and node.target == "_guards_fn"):
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def register_constant(
    module: torch.nn.Module,
    stem: str,
    value: torch.Tensor,
    *,
    parameter: bool = False,
    numbered: bool = False,
) -> str:
    """Register ``value`` on ``module`` under :func:`fresh_attr_name` and return the name.

    A buffer by default; ``parameter=True`` registers a ``requires_grad=False``
    parameter (what batch-norm folding produces). ``value`` is stored, not copied.

    >>> import torch
    >>> m = torch.nn.Module()
    >>> register_constant(m, "scale", torch.ones(2)), register_constant(m, "scale", torch.ones(2))
    ('scale', 'scale_1')
    >>> name = register_constant(m, "w", torch.ones(2), parameter=True)
    >>> type(getattr(m, name)).__name__, getattr(m, name).requires_grad
    ('Parameter', False)
    """
    name = fresh_attr_name(module, stem, numbered=numbered)
    if parameter:
        module.register_parameter(name, torch.nn.Parameter(value.detach(), requires_grad=False))
    else:
        module.register_buffer(name, value)
    return name


def attr_value(module: torch.nn.Module, target: str) -> Any:
    """What a ``get_attr`` node with dotted ``target`` (``"layer.0.weight"``) reads.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> attr_value(m, "0.weight").shape
    torch.Size([3, 2])
    """
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def get_attr_value(node: Node) -> Any | None:
    """The value a ``get_attr`` node reads from its graph's owning module; ``None``
    for any other node (or a graph without an owning module).

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(2, 3), (torch.randn(1, 2),)).module()
    >>> [tuple(get_attr_value(n).shape) for n in gm.graph.nodes if n.op == "get_attr"]
    [(3, 2), (3,)]
    >>> x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    >>> get_attr_value(x) is None
    True
    """
    owner = node.graph.owning_module
    if node.op != "get_attr" or owner is None:
        return None
    return attr_value(owner, str(node.target))


def _clean_path(path: str) -> str:
    # export spells `self.layers[0].fc` as "L['self'].layers[0].fc" in some modes
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").removeprefix("self.")


def qualified_type_name(t: Any) -> str:
    """How :func:`module_stack` names a module type: ``module.QualName`` (a string is kept).

    >>> import torch
    >>> qualified_type_name(torch.nn.Linear)
    'torch.nn.modules.linear.Linear'
    """
    if isinstance(t, str):
        return t
    return f"{t.__module__}.{t.__qualname__}"


def module_stack(node: Node) -> list[tuple[str, str]]:
    """``[(module_path, qualified_type_name), ...]`` from outermost to innermost.

    Read from ``node.meta["nn_module_stack"]``, which ``torch.export`` records.
    Paths use dots for list indices (``layers.0.fc``). Nodes without the metadata
    (e.g. those a pass created) give an empty list.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(2, 2)),
    ...                          (torch.randn(1, 2),)).module()
    >>> module_stack(next(n for n in gm.graph.nodes if n.op == "call_function"))
    [('', 'torch.nn.modules.container.Sequential'), ('0', 'torch.nn.modules.linear.Linear')]
    """
    stack = node.meta.get("nn_module_stack") or {}
    return [(_clean_path(p), qualified_type_name(t)) for p, t in stack.values()]


def module_path(node: Node) -> str:
    """The innermost module path of ``node`` (``"layers.0.fc"``), ``""`` when none.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    >>> gm = torch.export.export(m, (torch.randn(1, 2),)).module()
    >>> [module_path(n) for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]
    ['', '0.0']
    """
    stack = module_stack(node)
    return stack[-1][0] if stack else ""


def describe_node(node: Node) -> str:
    """Name a node for a message: its name, what it calls, and its module path.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(2, 2)),
    ...                          (torch.randn(1, 2),)).module()
    >>> describe_node(next(n for n in gm.graph.nodes if n.op == "call_function"))
    "node 'linear' (call_function aten.linear.default, module '0')"
    """
    path = module_path(node)
    # OpOverloads print as "aten.linear.default"; plain callables by their name
    target = str(node.target) if hasattr(node.target, "_schema") else getattr(
        node.target, "__name__", str(node.target))
    where = f", module '{path}'" if path else ""
    return f"node '{node.name}' ({node.op} {target}{where})"


class BatchNormArgs(NamedTuple):
    """The arguments of a batch-norm node, whichever ATen op it is.

    Tensor arguments are the nodes (or ``None``) the batch norm reads.
    """

    input: Any
    weight: Any
    bias: Any
    running_mean: Any
    running_var: Any
    training: bool
    momentum: float
    eps: float


def batch_norm_args(bn: Node) -> BatchNormArgs:
    """Decode ``aten.batch_norm.default`` or ``aten._native_batch_norm_legit_no_training``.

    ``batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
    eps, cudnn_enabled)``; ``_native_batch_norm_legit_no_training(input, weight, bias,
    running_mean, running_var, momentum, eps)`` is always ``training=False``.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).eval()
    >>> gm = torch.export.export(m, (torch.randn(1, 1, 2, 2),)).module()
    >>> bn = next(n for n in gm.graph.nodes if "batch_norm" in str(n.target))
    >>> a = batch_norm_args(bn)
    >>> a.input.name, a.training, a.eps
    ('conv2d', False, 1e-05)
    """
    a: Any = bn.args
    if bn.target == aten.batch_norm.default:
        return BatchNormArgs(a[0], a[1], a[2], a[3], a[4], bool(a[5]), float(a[6]), float(a[7]))
    if bn.target == aten._native_batch_norm_legit_no_training.default:
        return BatchNormArgs(a[0], a[1], a[2], a[3], a[4], False, float(a[5]), float(a[6]))
    raise ArgumentValueError(
        f"batch_norm_args got {describe_node(bn)}, which is not a batch norm; pass a node whose "
        "target is aten.batch_norm.default or aten._native_batch_norm_legit_no_training.default"
    )


class ConvArgs(NamedTuple):
    """The arguments of a conv or transposed-conv node after its input and weight, with
    ATen's defaults filled in. ``stride``, ``padding``, ``dilation`` and ``output_padding``
    are as written in the graph (an int, a list, or for ``padding`` "same"/"valid")."""

    bias: Any
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    output_padding: Any
    transposed: bool


# argument names after (input, weight), in schema order
_CONV_NAMES: tuple[str, ...] = ("bias", "stride", "padding", "dilation", "groups")
_CONV_TRANSPOSE_NAMES: tuple[str, ...] = ("bias", "stride", "padding", "output_padding", "groups", "dilation")
_CONV_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def conv_args(node: Node) -> ConvArgs:
    """Decode ``aten.conv{1,2,3}d`` (``.default`` or ``.padding``) or
    ``aten.conv_transpose{1,2,3}d``, positional or keyword arguments.

    ``conv(input, weight, bias, stride, padding, dilation, groups)``;
    ``conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation)``.

    >>> import torch
    >>> m = torch.nn.Conv2d(4, 4, 3, stride=2, groups=4)
    >>> gm = torch.export.export(m, (torch.randn(1, 4, 8, 8),)).module()
    >>> a = conv_args(next(n for n in gm.graph.nodes if n.op == "call_function"))
    >>> a.stride, a.padding, a.groups, a.transposed
    ([2, 2], [0, 0], 4, False)
    """
    if node.target in CONV_OPS:
        names, transposed = _CONV_NAMES, False
    elif node.target in CONV_TRANSPOSE_OPS:
        names, transposed = _CONV_TRANSPOSE_NAMES, True
    else:
        raise ArgumentValueError(
            f"conv_args got {describe_node(node)}, which is not a convolution; pass a node whose "
            "target is one of pt2e.ops.CONV_OPS or CONV_TRANSPOSE_OPS")
    values: dict[str, Any] = dict(_CONV_DEFAULTS)
    values.update(zip(names, node.args[2:]))
    values.update((k, v) for k, v in node.kwargs.items() if k in values)
    for k in ("stride", "padding", "dilation", "output_padding", "groups"):
        if values[k] is None:
            values[k] = _CONV_DEFAULTS[k]
    return ConvArgs(values["bias"], values["stride"], values["padding"], values["dilation"],
                    int(values["groups"]), values["output_padding"], transposed)


def remove_dead_code(model: GraphModule, *, recompile: bool = True) -> int:
    """Erase pure nodes whose result nobody uses (e.g. an unused BERT pooler).

    Unlike ``Graph.eliminate_dead_code`` it keeps every ``call_module`` node (the
    exported ``_guards_fn`` has no users but checks the inputs) and every node with
    side effects (in-place updates of buffers). Returns the number of nodes erased.
    Pass ``recompile=False`` when the caller recompiles once at the end.

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         unused = torch.tanh(x)
    ...         return x + 1
    >>> gm = torch.export.export(M(), (torch.randn(2),)).module()
    >>> remove_dead_code(gm)
    1
    """
    erased = 0
    for node in reversed(list(model.graph.nodes)):
        if node.op not in ("call_function", "call_method", "get_attr") or node.users:
            continue
        if node.op != "get_attr" and node.is_impure():
            continue
        model.graph.erase_node(node)
        erased += 1
    if erased and recompile:
        model.graph.lint()
        model.recompile()
    return erased
