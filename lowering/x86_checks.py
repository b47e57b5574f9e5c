"""What the x86 Inductor lowering can run, checked before Inductor sees the graph.

Inductor's int8 passes turn ``conv`` / ``linear`` reading dequantized inputs into
oneDNN ``qconv`` / ``qlinear`` kernels; those take uint8 activations (conv) or
uint8/int8 activations (linear) and int8 weights. Any other storage dtype (an
int16 activation spec, say) reaches a kernel that rejects it with a
``BackendCompilerFailed`` naming none of the model. :func:`check_x86_graph`
names the node and the specs that work instead.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node

from pt2e.errors import Pt2eError
from pt2e.graph import attr_value, conv_args, describe_node, register_constant, remove_dead_code
from pt2e.ops import CONV_OPS, LINEAR_OPS, is_dequantize, is_quantize

from .contract import check_lowerable

__all__ = [
    "X86LoweringError",
    "check_x86_graph",
    "check_x86_lowerable",
    "unary_then_add",
    "avoid_unary_then_add",
    "is_post_op_fusion_failure",
    "retry_without_conv_post_ops",
    "int8_conv1d",
    "conv1d_as_conv2d",
    "noncontiguous_dynamic_linear_inputs",
    "contiguous_linear_inputs",
    "rewrite_for_x86",
    "X86_ACTIVATION_DTYPES",
    "X86_WEIGHT_DTYPES",
]

_FP8 = torch.float8_e4m3fn
# storage dtypes oneDNN's int8 kernels take, per op family (measured on torch 2.13)
X86_ACTIVATION_DTYPES = {
    "conv": frozenset({torch.uint8, _FP8}),
    "linear": frozenset({torch.uint8, torch.int8, _FP8}),
}
X86_WEIGHT_DTYPES = frozenset({torch.int8, _FP8})


class X86LoweringError(Pt2eError, ValueError):
    """The converted graph holds a quantization the x86 Inductor lowering cannot run."""


def _storage_dtype(dq: Node) -> torch.dtype | None:
    dtype = dq.kwargs.get("dtype")
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((a for a in dq.args if isinstance(a, torch.dtype)), None)


def _names(dtypes: frozenset[torch.dtype]) -> str:
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


def check_x86_graph(model: GraphModule) -> None:
    """Raise :class:`X86LoweringError` for a conv/linear whose q/dq dtypes oneDNN cannot take.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class I16(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.01, 0, -32768, 32767, torch.int16)
    ...         return self.fc(qd.dequantize_per_tensor.default(q, 0.01, 0, -32768, 32767,
    ...                                                         torch.int16))
    >>> gm = torch.export.export(I16(), (torch.randn(1, 2),)).module()
    >>> check_x86_graph(gm)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lowering.x86_checks.X86LoweringError: node 'linear' ... reads torch.int16 activations ...
    """
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        family = "conv" if node.target in CONV_OPS else "linear" if node.target in LINEAR_OPS else None
        if family is None or len(node.args) < 2:
            continue
        act, weight = node.args[0], node.args[1]
        if is_dequantize(act):
            dtype = _storage_dtype(act)
            allowed = X86_ACTIVATION_DTYPES[family]
            if dtype is not None and dtype not in allowed:
                raise X86LoweringError(
                    f"{describe_node(node)} reads {dtype} activations (from '{act.name}'), but "
                    f"the x86 Inductor lowering's int8 {family} kernels take {_names(allowed)} "
                    f"activations (per-tensor) and {_names(X86_WEIGHT_DTYPES)} weights. Quantize "
                    "this op with get_default_x86_inductor_quantization_config() specs, or leave "
                    "it float (X86InductorQuantizer().set_module_name_qconfig(name, None))"
                )
        if is_dequantize(weight):
            dtype = _storage_dtype(weight)
            if dtype is not None and dtype not in X86_WEIGHT_DTYPES:
                raise X86LoweringError(
                    f"{describe_node(node)} reads a {dtype} weight (from '{weight.name}'), but "
                    f"the x86 Inductor lowering's int8 kernels take {_names(X86_WEIGHT_DTYPES)} "
                    "weights; quantize weights with get_default_x86_inductor_quantization_config() "
                    "(int8 per-channel symmetric), or leave the op float"
                )


def check_x86_lowerable(model: object, where: str) -> None:
    """Everything the x86 lowering refuses up front: a prepared-only model, unsupported dtypes."""
    check_lowerable(model, where)
    if isinstance(model, GraphModule):
        check_x86_graph(model)


aten = torch.ops.aten
# unary ops Inductor fuses into qconv/qlinear as post-ops, and the adds it fuses as binary ones
_UNARY_POST_OPS = frozenset({
    aten.relu.default, aten.relu_.default, aten.gelu.default, aten.gelu_.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.hardswish.default, aten.hardswish_.default,
    aten.silu.default, aten.silu_.default,
})
_ADD_OPS = frozenset({aten.add.Tensor, aten.add_.Tensor})


def unary_then_add(model: GraphModule, ops: frozenset[Any] = LINEAR_OPS) -> list[Node]:
    """Int8 linear nodes whose output goes through one unary post-op into an add.

    ``other + relu(linear(x))`` (or gelu) makes Inductor's int8 qlinear post-op
    fusion fail with a bare ``AssertionError`` (torch 2.13; torchao's flow fails the
    same way): it fuses the unary op into the kernel, then tries to fuse the add into
    the already-fused kernel. The fuzzer found it (tests/fuzz). Convolutions in the
    same shape compile (``onednn.qconv_pointwise``), so they are left alone.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class Residual(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.01, 0, 0, 255, torch.uint8)
    ...         h = self.fc(qd.dequantize_per_tensor.default(q, 0.01, 0, 0, 255, torch.uint8))
    ...         return x + torch.relu(h)
    >>> gm = torch.export.export(Residual(), (torch.randn(2, 4),)).module()
    >>> [n.name for n in unary_then_add(gm)]
    ['linear']
    """
    found = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in ops:
            continue
        if not node.args or not is_dequantize(node.args[0]) or len(node.users) != 1:
            continue
        unary = next(iter(node.users))
        if unary.target in _UNARY_POST_OPS and any(u.target in _ADD_OPS for u in unary.users):
            found.append(node)
    return found


def avoid_unary_then_add(model: GraphModule, where: str, ops: frozenset[Any] = LINEAR_OPS) -> GraphModule:
    """``model``, or a copy in which each :func:`unary_then_add` op (of ``ops``) reads float
    activations.

    Those ops then run in fp32 (the kernel report lists them as float) instead of
    crashing Inductor; a warning names them. The caller's model is not changed.
    Convolutions in this shape usually compile, but not always (the fuzzer found
    ``x = cat(conv_a(x), conv_b(x)); x + relu(conv(x))`` failing the same way), so
    ``compile_x86`` applies this to ``CONV_OPS`` only after such a failure.
    """
    if not unary_then_add(model, ops):
        return model
    model = copy.deepcopy(model)
    nodes = unary_then_add(model, ops)
    for node in nodes:
        dq = node.args[0]
        source = dq.args[0] if isinstance(dq, Node) else None
        if isinstance(dq, Node) and isinstance(source, Node) and is_quantize(source) \
                and isinstance(source.args[0], Node):
            node.replace_input_with(dq, source.args[0])
    remove_dead_code(model)
    names = ", ".join(describe_node(n) for n in nodes)
    family = "linear" if ops == LINEAR_OPS else "conv"
    warnings.warn(
        f"{where}: {names} stay float: Inductor's int8 post-op fusion (torch "
        f"{torch.__version__}) fails on a {family} followed by a unary op (relu, gelu, ...) "
        "and an add, so these read fp32 activations; the rest of the model runs int8. "
        f"To run them int8, put the add before the activation (relu(x + {family}(x)) fuses).",
        stacklevel=3,
    )
    return model


def _int8_conv1d(node: Node) -> bool:
    """A ``conv1d`` reading a dequantized activation and a dequantized constant weight."""
    if node.op != "call_function" or node.target != aten.conv1d.default or len(node.args) < 2:
        return False
    act, weight = node.args[0], node.args[1]
    return (isinstance(act, Node) and is_dequantize(act) and isinstance(act.args[0], Node)
            and isinstance(weight, Node) and is_dequantize(weight)
            and isinstance(weight.args[0], Node) and weight.args[0].op == "get_attr")


def _other_than(keep: Node) -> Callable[[Node], bool]:
    return lambda node: node is not keep


def int8_conv1d(model: GraphModule) -> list[Node]:
    """The int8 ``conv1d`` nodes :func:`conv1d_as_conv2d` rewrites."""
    return [n for n in model.graph.nodes if _int8_conv1d(n)]


def conv1d_as_conv2d(model: GraphModule) -> GraphModule:
    """``model``, or a copy in which every int8 ``conv1d`` is an int8 ``conv2d`` of height 1.

    Inductor's int8 ``conv1d`` path (torch 2.13) fails or miscompiles where its
    ``conv2d`` path works (both found by the fuzzer, tests/fuzz): oneDNN's
    pointwise qconv1d has no hardswish, SiLU or hardtanh/ReLU6 post-op
    (``RuntimeError: Unsupported post op hardswish for quantized pointwise conv1d``),
    takes no residual add (``x + conv1d(x)`` then an activation), and two int8
    conv1d reading one input with different padding compile to the same padding.
    So each becomes ``squeeze(conv2d(unsqueeze(x), unsqueeze(w)))``: the unsqueeze
    is on the uint8 activation and the int8 weight (a new constant), so Inductor
    still sees ``dequantize -> conv2d`` and runs its int8 kernel, and the squeeze
    follows the conv's fusable tail (unary post-ops, then the output quantize), so
    those still fuse. Numerics are unchanged; the caller's model is not.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class Conv(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_buffer("w", torch.ones(2, 2, 3, dtype=torch.int8))
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x, 0.01, 0, 0, 255, torch.uint8)
    ...         x = qd.dequantize_per_tensor.default(q, 0.01, 0, 0, 255, torch.uint8)
    ...         w = qd.dequantize_per_tensor.default(self.w, 0.1, 0, -128, 127, torch.int8)
    ...         return torch.nn.functional.hardswish(torch.conv1d(x, w, padding=1))
    >>> gm = torch.export.export(Conv(), (torch.rand(1, 2, 5),)).module()
    >>> x = torch.rand(1, 2, 5)
    >>> rewritten = conv1d_as_conv2d(gm)
    >>> [n.target.__name__ for n in rewritten.graph.nodes if "conv" in str(n.target)]
    ['conv2d.default']
    >>> torch.equal(rewritten(x), gm(x))
    True
    """
    if not int8_conv1d(model):
        return model
    model = copy.deepcopy(model)
    graph = model.graph
    weights: dict[str, str] = {}  # int8 weight attribute -> its 4-D copy (a reused conv shares it)
    for conv in int8_conv1d(model):
        act, weight = conv.args[0], conv.args[1]
        stored = weight.args[0] if isinstance(weight, Node) else None
        # (narrowing only: _int8_conv1d chose these shapes)
        if not (isinstance(act, Node) and isinstance(weight, Node) and isinstance(stored, Node)
                and isinstance(stored.target, str) and callable(act.target) and callable(weight.target)):
            continue
        if stored.target not in weights:
            value = attr_value(model, stored.target)
            weights[stored.target] = register_constant(model, f"{stored.target.replace('.', '_')}_2d",
                                                       value.unsqueeze(2))
        with graph.inserting_before(conv):
            q_in = act.args[0]
            act_2d = graph.call_function(act.target, (graph.call_function(aten.unsqueeze.default, (q_in, 2)),
                                                      *act.args[1:]), dict(act.kwargs))
            weight_2d = graph.call_function(weight.target, (graph.get_attr(weights[stored.target]),
                                                            *weight.args[1:]), dict(weight.kwargs))
        a = conv_args(conv)

        def _2d(v: Any, fill: int) -> list[int]:
            return [fill, *(v if isinstance(v, (list, tuple)) else [v])]

        conv.target = aten.conv2d.default
        conv.args = (act_2d, weight_2d, a.bias, _2d(a.stride, 1), _2d(a.padding, 0), _2d(a.dilation, 1), a.groups)
        conv.kwargs = {}
        # the tail Inductor fuses into the kernel stays 4-D: unary post-ops, then the quantize
        end = conv
        conv.meta.pop("val", None)
        while len(end.users) == 1:
            user = next(iter(end.users))
            if user.args[0] is not end or not (user.target in _UNARY_POST_OPS or is_quantize(user)):
                break
            end = user
            end.meta.pop("val", None)
            if is_quantize(user):
                break
        with graph.inserting_after(end):
            squeezed = graph.call_function(aten.squeeze.dim, (end, 2))
        end.replace_all_uses_with(squeezed, delete_user_cb=_other_than(squeezed))
    remove_dead_code(model)
    return model


def _symbolic_noncontiguous(value: object) -> bool:
    if not isinstance(value, torch.Tensor) or value.dim() < 3:
        return False
    if not any(isinstance(d, torch.SymInt) for d in value.shape):
        return False
    try:
        return not bool(value.is_contiguous())
    except Exception:  # a size the shape environment cannot decide: assume the worst
        return True


def noncontiguous_dynamic_linear_inputs(model: GraphModule) -> list[Node]:
    """The quantize nodes feeding an int8 ``linear`` a non-contiguous 3-D+ activation with a
    dynamic size (``meta["val"]`` of the quantized value)."""
    found: list[Node] = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in LINEAR_OPS or not node.args:
            continue
        dq = node.args[0]
        q = dq.args[0] if isinstance(dq, Node) and is_dequantize(dq) and dq.args else None
        if isinstance(q, Node) and is_quantize(q) and isinstance(q.args[0], Node) \
                and _symbolic_noncontiguous(q.args[0].meta.get("val")) and q not in found:
            found.append(q)
    return found


def contiguous_linear_inputs(model: GraphModule) -> GraphModule:
    """``model``, or a copy in which every :func:`noncontiguous_dynamic_linear_inputs`
    quantize reads a contiguous copy of its input.

    A 3-D+ ``linear`` input that is not contiguous (attention's output after its
    transpose, say) is lowered by AOT autograd to ``expand`` + ``bmm``; with a dynamic
    batch size, the check of Inductor's int8 ``bmm`` pattern (torch 2.13,
    ``fx_passes/quantization.py``) builds ``torch.Size`` from a symbolic size and dies
    with ``TypeError: torch.Size() takes an iterable of 'int'`` (found by the fuzzer,
    tests/fuzz). A contiguous input takes the ``addmm`` path, which handles dynamic
    sizes. The copy is made before the quantize, so Inductor still sees
    ``dequantize -> linear`` and runs its int8 kernel; numerics are unchanged, the
    caller's model is not, and static shapes are left alone.

    >>> import torch
    >>> qd = torch.ops.quantized_decomposed
    >>> class Transposed(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         q = qd.quantize_per_tensor.default(x.transpose(1, 2), 0.01, 0, 0, 255, torch.uint8)
    ...         return self.fc(qd.dequantize_per_tensor.default(q, 0.01, 0, 0, 255, torch.uint8))
    >>> x = torch.rand(2, 4, 3)
    >>> gm = torch.export.export(Transposed(), (x,),
    ...                          dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    >>> rewritten = contiguous_linear_inputs(gm)
    >>> [n.name for n in noncontiguous_dynamic_linear_inputs(gm)], torch.equal(rewritten(x), gm(x))
    (['quantize_per_tensor'], True)
    """
    if not noncontiguous_dynamic_linear_inputs(model):
        return model
    model = copy.deepcopy(model)
    for q in noncontiguous_dynamic_linear_inputs(model):
        source = q.args[0]
        with model.graph.inserting_before(q):
            dense = model.graph.call_function(aten.clone.default, (source,),
                                              {"memory_format": torch.contiguous_format})
        q.replace_input_with(source, dense)  # type: ignore[arg-type]
    model.graph.lint()
    model.recompile()
    return model


def rewrite_for_x86(model: GraphModule, where: str) -> GraphModule:
    """Every rewrite the x86 lowering makes before Inductor sees ``model`` (the caller's
    model is not changed): :func:`avoid_unary_then_add`, :func:`conv1d_as_conv2d`,
    :func:`contiguous_linear_inputs`."""
    return contiguous_linear_inputs(conv1d_as_conv2d(avoid_unary_then_add(model, where)))


def is_post_op_fusion_failure(error: BaseException) -> bool:
    """Whether ``error`` is Inductor's int8 post-op fusion failing with a bare ``AssertionError``
    (``fx_passes/quantization.py``; see :func:`avoid_unary_then_add`)."""
    chain: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    frames = [f for c in chain for f in traceback.extract_tb(c.__traceback__)]
    return any(isinstance(c, AssertionError) for c in chain) and any(
        f.filename.endswith("fx_passes/quantization.py") for f in frames)


def retry_without_conv_post_ops(model: object, error: BaseException, where: str) -> GraphModule | None:
    """The model to compile again after ``error``, or ``None`` to re-raise it.

    When ``error`` is Inductor's post-op fusion failure (:func:`is_post_op_fusion_failure`)
    and ``model`` has convs in the unary-then-add shape, the answer is a copy with those
    convs fp32 (:func:`avoid_unary_then_add`, which warns); otherwise ``None``. Both x86
    lowerings (``compile_x86``, ``lower_pt2e_quantized_to_x86``) make this one decision.
    """
    if not isinstance(model, GraphModule) or not is_post_op_fusion_failure(error):
        return None
    fallback = avoid_unary_then_add(model, where, CONV_OPS)
    return None if fallback is model else fallback
