"""Bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction", Sec. 4.2, empirical variant; the same idea as NNCF's fast bias correction).

Quantization error is biased: ``E[y_q] != E[y]`` for a quantized layer, because the
rounding error of a layer's weights ``eps = W~ - W`` meets inputs whose mean is not 0
(post-ReLU, post-hardswish activations are mostly positive), and an upstream bias is
passed on. Per output channel ``c`` the expected error of a quantized conv/linear is

    delta_c = E[(W~ x~ + b)_c] - E[(W x + b)_c]    (= (eps E[x])_c when x~ = x)

with ``x~`` the input the quantized model really feeds it and ``x`` the float
model's. Subtracting ``delta`` from the bias makes the layer's output unbiased.
Layers are corrected in graph order on the quantized model, each one seeing the
already corrected layers before it, in one pass over the calibration data (all
batches run in lockstep, node by node; only live values are kept).

Run it after ``convert_pt2e`` with the float model the quantized one was prepared
from; it works with any quantizer whose converted graph keeps the bias a float
constant (all of ours).

>>> import copy, torch
>>> from pt2e import convert_pt2e, prepare_pt2e
>>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> data = [torch.rand(16, 8) + 1 for _ in range(4)]       # inputs with a large mean
>>> gm = torch.export.export(torch.nn.Linear(8, 4), (data[0],)).module()
>>> prepared = prepare_pt2e(copy.deepcopy(gm), X86InductorQuantizer().set_global(
...     get_default_x86_inductor_quantization_config()))
>>> for x in data: _ = prepared(x)
>>> q = convert_pt2e(prepared)
>>> bc = BiasCorrection(gm, data)
>>> bc(q).modified, len(bc.layers)
(True, 1)
>>> err = lambda: float(torch.cat([q(x) - gm(x) for x in data]).mean(0).abs().max().detach())
>>> err() < 1e-6                                              # mean error removed
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .equalization import _drop_dead_constants, _replace_constant
from .graph import get_attr_value, module_path, register_constant
from .layerwise import batch_args, checked_inputs, float_twins, layers, run_in_lockstep
from .ops import CONV_OPS, is_dequantize

__all__ = ["BiasCorrection", "CorrectedLayer"]


@dataclass(frozen=True, kw_only=True)
class CorrectedLayer:
    """One corrected layer: its module path (or node name), the largest ``|delta_c|`` and the
    largest ``|delta_c|`` relative to the float output's standard deviation in channel ``c``."""

    layer: str
    max_shift: float
    max_relative_shift: float


def _axis(node: Node) -> int:
    return 1 if node.target in CONV_OPS else -1


def _moments(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    flat = t.detach().double().movedim(axis, 0).flatten(1)
    return flat.sum(1), (flat * flat).sum(1), flat.shape[1]


class _Means(Interpreter):
    def __init__(self, gm: GraphModule, watch: set[Node]) -> None:
        super().__init__(gm)
        self.watch = watch
        self.sums: dict[Node, list[Any]] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n in self.watch and isinstance(out, torch.Tensor):
            s, s2, k = _moments(out, _axis(n))
            acc = self.sums.setdefault(n, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + s, acc[1] + s2, acc[2] + k
        return out


def _float_stats(ref: GraphModule, data: list[Any]) -> dict[Node, tuple[torch.Tensor, torch.Tensor]]:
    rec = _Means(ref, set(layers(ref)))
    with torch.no_grad():
        for batch in data:
            rec.run(*batch_args(batch))
    out = {}
    for n, (s, s2, k) in rec.sums.items():
        mean = s / k
        out[n] = (mean, (s2 / k - mean * mean).clamp(min=0).sqrt())
    return out


def _is_quantized(node: Node) -> bool:
    return len(node.args) > 1 and is_dequantize(node.args[1])


class BiasCorrection(PassBase):
    """Correct each quantized conv/linear's bias of a converted model (the pass's input)
    for the expected error of its output against ``float_model``.

    ``float_model`` is the exported float model that was prepared (batch norms are
    folded and dead code removed on a copy, as ``prepare_pt2e``/``convert_pt2e`` do, so
    the layers match one to one, in graph order). ``calibration_data`` is a list of batches. ``min_relative_shift``
    skips channels whose shift is below that fraction of the output's standard
    deviation (noise). After the pass ``layers`` lists what was corrected. Example:
    see the module docstring.
    """

    def __init__(self, float_model: GraphModule, calibration_data: Sequence[Any], *,
                 min_relative_shift: float = 0.0) -> None:
        super().__init__()
        self.calibration_data = checked_inputs("BiasCorrection", float_model, calibration_data)
        self.float_model = float_model
        self.min_relative_shift = min_relative_shift
        self.layers: tuple[CorrectedLayer, ...] = ()

    def call(self, graph_module: GraphModule) -> PassResult:
        """Measure the float means, then walk the quantized graph correcting layer by layer."""
        ref, twins = float_twins("BiasCorrection", self.float_model, graph_module)
        stats = _float_stats(ref, self.calibration_data)
        targets = {q: stats[f] for q, f in twins.items() if _is_quantized(q) and f in stats}
        done: list[CorrectedLayer] = []

        def visit(n: Node, runs: list[Interpreter]) -> None:
            if n in targets:
                rec = self._correct_layer(graph_module, n, runs, *targets[n])
                if rec is not None:
                    done.append(rec)

        run_in_lockstep(graph_module, self.calibration_data, visit)
        self.layers = tuple(done)
        if done:
            _drop_dead_constants(graph_module)
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, bool(done))

    def _correct_layer(self, gm: GraphModule, n: Node, runs: list[Interpreter],
                       f_mean: torch.Tensor, f_std: torch.Tensor) -> CorrectedLayer | None:
        axis = _axis(n)
        total: torch.Tensor | float = 0.0
        count = 0
        for it in runs:
            s, _, k = _moments(it.env[n], axis)
            total, count = total + s, count + k
        delta = torch.as_tensor(total) / count - f_mean
        rel = delta.abs() / f_std.clamp(min=1e-12)
        delta = torch.where(rel >= self.min_relative_shift, delta, torch.zeros_like(delta))
        if not torch.any(delta != 0):
            return None
        bias = n.args[2] if len(n.args) > 2 else None
        if isinstance(bias, Node):
            b = get_attr_value(bias)
            if not isinstance(b, torch.Tensor):
                return None
            _replace_constant(gm, n, bias, b - delta.to(b.dtype), f"{str(bias.target)}_corrected")
        elif bias is None:
            name = register_constant(gm, f"{n.name}_bias_corrected", (-delta).float())
            with gm.graph.inserting_before(n):
                b_node = gm.graph.get_attr(name)
            args = list(n.args) + [None] * (3 - len(n.args))
            args[2] = b_node
            n.args = tuple(args)
        else:
            return None
        shape = [1] * runs[0].env[n].dim()
        shape[axis] = delta.numel()
        for it in runs:
            out = it.env[n]
            it.env[n] = out - delta.to(out.dtype).view(shape)
        return CorrectedLayer(layer=module_path(n) or n.name, max_shift=float(delta.abs().max()),
                              max_relative_shift=float(rel.max()))
