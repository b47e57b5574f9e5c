"""GPTQ weight rounding (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"; the Optimal Brain Quantization update of Frantar &
Alistarh 2022, done column by column).

Rounding each weight to its nearest grid point makes every weight error as small as it can
be on its own, but a layer's output sees the weight errors summed over its inputs. For a
layer ``y = W x`` and inputs ``X`` (one column per sample), the output error of the
quantized weights ``W~`` is

    E = ||(W - W~) X||^2 = sum over rows r of  d_r H d_r^T,   d_r = W_r - W~_r,   H = X X^T

GPTQ quantizes the weights one input column ``i`` at a time and, after each, moves the
weights of the same row that are not quantized yet to cancel the error it just made, by the
least-squares update ``H`` prescribes (``F``: the columns still float):

    W[:, F] -= (W[:, i] - W~[:, i]) / [H_F^-1]_ii * [H_F^-1]_{i, F}

All these inverses come from one Cholesky factor of ``H^-1`` (the paper's Sec. 3). ``H`` is
measured on the inputs the quantized model really feeds the layer, with the layers before it
already rounded (damped by ``damp`` times its mean diagonal). With ``restrict_rounding`` (the
default) each weight still ends on one of the two grid points around its float value, as in
AdaRound (Nagel et al. 2020): the compensation only chooses up or down, so it cannot fit the
calibration data beyond that (``False`` lets it move a weight further, as the paper does).

Worked example: ``y = w1 x1 + w2 x2`` with ``x1 = x2`` always (``H`` all ones), grid step 1,
``w = (0.4, 0.4)``. Nearest rounding gives ``(0, 0)``: output error ``0.8 x``. GPTQ rounds
``w1`` to 0 (error 0.4), moves ``w2`` to ``0.8`` and rounds it to 1: output error ``0.2 x``.

The grid (scales, zero points, range) and the graph are unchanged; only the integer weights
of each quantized conv/linear change, so every lowering takes the model as before. Run it
after ``convert_pt2e`` with the float model the quantized one was prepared from.

>>> import copy, torch
>>> from pt2e import convert_pt2e, prepare_pt2e
>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> base = torch.randn(64, 1)
>>> data = [base[i:i + 16] * torch.ones(16, 32) + 0.05 * torch.randn(16, 32) for i in range(0, 64, 16)]
>>> gm = torch.export.export(torch.nn.Linear(32, 8), (data[0],)).module()
>>> prepared = prepare_pt2e(copy.deepcopy(gm), X86InductorQuantizer().set_global(
...     get_default_x86_inductor_quantization_config()))
>>> for x in data: _ = prepared(x)
>>> q = convert_pt2e(prepared)
>>> gptq = GPTQ(gm, data)
>>> gptq(q).modified, len(gptq.layers)
(True, 1)
>>> gptq.layers[0].sqnr_gptq > gptq.layers[0].sqnr_nearest + 6   # dB, on these inputs
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .equalization import _drop_dead_constants, _replace_constant
from .errors import ArgumentValueError
from .graph import conv_args, get_attr_value, module_path
from .layerwise import checked_inputs, float_twins, run_in_lockstep
from .ops import LINEAR_OPS, PER_CHANNEL_OPS, is_dequantize, is_quantize

__all__ = ["GPTQ", "RoundedLayer", "SkippedLayer", "gptq_round"]

aten = torch.ops.aten


@dataclass(frozen=True, kw_only=True)
class RoundedLayer:
    """One re-rounded layer: its module path (or node name), the weights per output
    (``columns``), and the output SQNR of its weight error alone on the calibration inputs
    (dB, ``10 log10(||W X||^2 / ||(W - W~) X||^2)``) with nearest rounding and with GPTQ."""

    layer: str
    columns: int
    sqnr_nearest: float
    sqnr_gptq: float


@dataclass(frozen=True, kw_only=True)
class SkippedLayer:
    """A conv/linear the pass left as converted, and why."""

    layer: str
    reason: str


@dataclass(frozen=True)
class _Grid:
    scale: torch.Tensor       # one per output channel
    zero_point: torch.Tensor
    qmin: int
    qmax: int

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return (q - self.zero_point) * self.scale


@dataclass(frozen=True, kw_only=True)
class _Target:
    """A layer the pass re-rounds: its float twin's weight, the grid, and the weight's nodes."""

    weight: torch.Tensor
    grid: _Grid
    dequantize: Node
    quantize: Node | None     # only when convert did not fold the weight
    constant: Node            # the get_attr of the int8 (folded) or float (not folded) weight
    dtype: torch.dtype


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int, *, damp: float = 0.01, restrict_rounding: bool = True) -> torch.Tensor:
    """The integer weights GPTQ chooses for ``weight`` (``[out, ...]``: every output row's
    weights flattened) given ``hessian`` (``[groups, n, n]``, ``X X^T`` of each group's
    inputs; output rows are split evenly between the groups, as a grouped conv's are), the
    per-row (or single) ``scale`` and ``zero_point`` and the integer range.

    >>> w = torch.tensor([[0.4, 0.4]])
    >>> h = torch.ones(1, 2, 2)                          # x1 = x2 always
    >>> one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    >>> gptq_round(w, h, one, zero, -128, 127, damp=1e-6).tolist()   # nearest would be [0, 0]
    [[0.0, 1.0]]
    """
    out = weight.shape[0]
    groups, n, _ = hessian.shape
    w = weight.reshape(groups, out // groups, n).double().clone()
    s = scale.double().reshape(-1).expand(out).reshape(groups, out // groups)
    z = zero_point.double().reshape(-1).expand(out).reshape(groups, out // groups)
    h = hessian.double().clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag.add_((diag == 0).double())  # an input that is always 0: any weight is exact there
    diag.add_(damp * diag.mean(1, keepdim=True))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    low = torch.floor(w / s.unsqueeze(2)) + z.unsqueeze(2)
    q = torch.empty_like(w)
    for i in range(n):
        qi = torch.round(w[:, :, i] / s) + z
        if restrict_rounding:
            qi = torch.minimum(torch.maximum(qi, low[:, :, i]), low[:, :, i] + 1)
        qi = qi.clamp(qmin, qmax)
        q[:, :, i] = qi
        err = (w[:, :, i] - (qi - z) * s) / u[:, i, i].unsqueeze(1)
        w[:, :, i + 1:] -= err.unsqueeze(2) * u[:, i, i + 1:].unsqueeze(1)
    return q.reshape(weight.shape)


def _as_list(v: Any, dims: int) -> list[int]:
    v = [v] if isinstance(v, int) else list(v)
    return v * dims if len(v) == 1 else v


def _conv_inputs(node: Node, x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """The inputs each weight of a conv meets (im2col), ``[groups, in/groups * k, samples]``,
    columns in the weight's own order (input channel, then kernel offsets row-major)."""
    dims = len(kernel)
    args = conv_args(node)
    stride, dilation, padding, groups = (_as_list(args.stride, dims), _as_list(args.dilation, dims),
                                         args.padding, args.groups)
    if isinstance(padding, str):  # conv2d.padding: "valid" or "same" (the extra pixel goes right)
        total = [0] * dims if padding == "valid" else [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in _as_list(padding, dims)]
    x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    size = x.shape[2:]
    outs = [(size[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(dims)]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = tuple(slice(o * dl, o * dl + st * (m - 1) + 1, st)
                      for o, dl, st, m in zip(offset, dilation, stride, outs))
        taps.append(x[(slice(None), slice(None), *index)])
    patches = torch.stack(taps, 2)  # N, C, K, *out
    n, c = patches.shape[:2]
    return (patches.reshape(n, groups, c // groups * len(taps), -1)
            .permute(1, 2, 0, 3).reshape(groups, c // groups * len(taps), -1))


def _layer_inputs(node: Node, x: torch.Tensor, weight_shape: Sequence[int]) -> torch.Tensor:
    if node.target in LINEAR_OPS:
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    return _conv_inputs(node, x, weight_shape[2:])


def _constant(v: Any) -> Any:
    return get_attr_value(v) if isinstance(v, Node) else v


def _weight_grid(dq: Node) -> tuple[_Grid | None, str]:
    """The integer grid of a weight's dequantize node (per output channel or per tensor)."""
    if dq.target in PER_CHANNEL_OPS:
        _, scale, zp, axis, qmin, qmax = (_constant(a) for a in dq.args[:6])
        if axis != 0:
            return None, f"its weight is quantized along axis {axis}, not per output channel"
    else:
        _, scale, zp, qmin, qmax = (_constant(a) for a in dq.args[:5])
    if not all(isinstance(v, (int, float, torch.Tensor)) for v in (scale, zp, qmin, qmax)):
        return None, "its weight's quantization parameters are not constants"
    return _Grid(torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1),
                 torch.as_tensor(zp, dtype=torch.float64).reshape(-1, 1), int(qmin), int(qmax)), ""


class GPTQ(PassBase):
    """Re-round the weights of every quantized conv/linear of a converted model (the pass's
    input) by GPTQ, against ``float_model``'s weights, on ``calibration_data``.

    ``float_model`` is the exported float model that was prepared (as for
    :class:`~pt2e.bias_correction.BiasCorrection`); ``calibration_data`` a list of batches.
    ``damp`` is added to the Hessian's diagonal as a fraction of its mean; ``restrict_rounding``
    keeps every weight on one of the two grid points around its float value (see the module
    docstring). After the pass ``layers`` lists each re-rounded layer with its weight-error
    SQNR before and after, and ``skipped`` the layers left alone, with the reason. Example:
    see the module docstring.
    """

    def __init__(self, float_model: GraphModule, calibration_data: Sequence[Any], *,
                 damp: float = 0.01, restrict_rounding: bool = True) -> None:
        super().__init__()
        self.calibration_data = checked_inputs("GPTQ", float_model, calibration_data)
        if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp > 0):
            raise ArgumentValueError(f"GPTQ(damp={damp!r}): pass a positive fraction of the Hessian's "
                                     "mean diagonal, e.g. 0.01")
        self.float_model = float_model
        self.damp = float(damp)
        self.restrict_rounding = restrict_rounding
        self.layers: tuple[RoundedLayer, ...] = ()
        self.skipped: tuple[SkippedLayer, ...] = ()

    def call(self, graph_module: GraphModule) -> PassResult:
        """Walk the quantized graph in order, re-rounding each layer on the inputs it gets."""
        _, twins = float_twins("GPTQ", self.float_model, graph_module)
        targets: dict[Node, _Target] = {}
        skipped: list[SkippedLayer] = []
        for q_node, f_node in twins.items():
            target, reason = self._target(q_node, f_node)
            if target is not None:
                targets[q_node] = target
            elif reason:
                skipped.append(SkippedLayer(layer=module_path(q_node) or q_node.name, reason=reason))
        done: list[RoundedLayer] = []

        def visit(n: Node, runs: list[Interpreter]) -> None:
            if n in targets:
                done.append(self._round_layer(graph_module, n, runs, targets[n]))

        run_in_lockstep(graph_module, self.calibration_data, visit)
        self.layers, self.skipped = tuple(done), tuple(skipped)
        if done:
            _drop_dead_constants(graph_module)
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, bool(done))

    @staticmethod
    def _target(q_node: Node, f_node: Node) -> tuple[_Target | None, str]:
        dq = q_node.args[1] if len(q_node.args) > 1 else None
        if not isinstance(dq, Node) or not is_dequantize(dq):
            return None, ""  # a float layer: the quantizer left its weight float
        quantize = dq.args[0] if isinstance(dq.args[0], Node) and is_quantize(dq.args[0]) else None
        source = quantize.args[0] if quantize is not None else dq.args[0]  # not folded: quantize(float)
        if not isinstance(source, Node) or source.op != "get_attr":
            return None, "its weight is not a constant"
        if len(dq.users) > 1:
            return None, f"its weight is shared by {len(dq.users)} layers"
        w = get_attr_value(f_node.args[1]) if isinstance(f_node.args[1], Node) else None
        if not isinstance(w, torch.Tensor):
            return None, "its float twin's weight is not a constant"
        w = w.detach()
        current = get_attr_value(source)
        if not isinstance(current, torch.Tensor) or current.shape != w.shape:
            return None, (f"its weight's shape {tuple(getattr(current, 'shape', ()))} is not its float "
                          f"twin's {tuple(w.shape)}")
        grid, reason = _weight_grid(dq)
        if grid is None:
            return None, reason
        c = current.detach().double().reshape(w.shape[0], -1)  # one row per output channel
        ints = c if quantize is None else torch.round(c / grid.scale) + grid.zero_point
        float_ints = (w.double().reshape(w.shape[0], -1) / grid.scale + grid.zero_point).clamp(grid.qmin, grid.qmax)
        if float((ints - float_ints).abs().max()) > 1.0 + 1e-6:
            return None, ("its quantized weights are more than one grid step from its float twin's: pass "
                          "the float model it was converted from (after QAT, its weights are the trained ones)")
        return _Target(weight=w, grid=grid, dequantize=dq, quantize=quantize, constant=source,
                       dtype=current.dtype), ""

    def _round_layer(self, gm: GraphModule, n: Node, runs: list[Interpreter], t: _Target) -> RoundedLayer:
        w, grid = t.weight, t.grid
        parts = (_layer_inputs(n, it.env[n.all_input_nodes[0]].double(), w.shape) for it in runs)
        h = sum((x @ x.transpose(1, 2) for x in parts), torch.zeros(()))
        flat = w.double().reshape(w.shape[0], -1)
        q = gptq_round(flat, h, grid.scale, grid.zero_point, grid.qmin, grid.qmax,
                       damp=self.damp, restrict_rounding=self.restrict_rounding)
        nearest = (torch.round(flat / grid.scale) + grid.zero_point).clamp(grid.qmin, grid.qmax)
        groups = h.shape[0]

        def sqnr(err: torch.Tensor) -> float:
            def power(e: torch.Tensor) -> float:
                e = e.reshape(groups, -1, e.shape[1])
                return float(torch.einsum("gri,gij,grj->", e, h, e))
            return 10 * math.log10(power(flat) / max(power(err), 1e-300))

        record = RoundedLayer(layer=module_path(n) or n.name, columns=flat.shape[1],
                              sqnr_nearest=sqnr(flat - grid.dequantize(nearest)),
                              sqnr_gptq=sqnr(flat - grid.dequantize(q)))
        # folded: new integers; not folded: the float weight moved onto the chosen grid points
        value = q if t.quantize is None else grid.dequantize(q)
        user = t.quantize if t.quantize is not None else t.dequantize
        _replace_constant(gm, user, t.constant, value.reshape(w.shape).to(t.dtype), f"{str(t.constant.target)}_gptq")
        chain = [c for c in (t.quantize, t.dequantize, n) if c is not None]
        for it in runs:  # the weight's constants were dropped from env after their last use
            for c in chain:
                it.env[c] = _evaluate(c, it.env)
        return record


def _evaluate(node: Node, env: dict[Node, Any]) -> Any:
    """``node``'s value from ``env``, reading any constant input its ``get_attr`` names."""
    def value(a: Node) -> Any:
        return env[a] if a in env else get_attr_value(a)
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), value)
    return node.target(*args, **kwargs)  # type: ignore[operator]
