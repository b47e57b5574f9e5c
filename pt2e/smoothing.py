"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", Sec. 4): move activation outliers into weights.

A few activation channels of a transformer are 10-100x larger than the rest, so a
per-tensor activation scale wastes most of the int8 grid on them. For ``Y = X W^T``
and any positive per-channel ``s``, ``Y = (X diag(s)^-1) (W diag(s))^T``: dividing
input channel ``j`` by ``s_j`` and multiplying weight column ``j`` by ``s_j`` changes
nothing in float. The paper's choice, with migration strength ``alpha`` in [0, 1],

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

(``max|W_j|`` over every layer reading ``X``; Q, K and V share one ``s``) leaves both
``X / s`` and ``W s`` with the per-channel range ``max|X_j| ** alpha * max|W_j| ** (1 - alpha)``.
``max|X_j|`` is measured on calibration data. The division is folded into the layer
that produces ``X`` when nothing else reads it (a ``linear``, ``conv`` or ``layer_norm``,
through ``relu``); otherwise (a post-LN BERT's layer norm also feeds the residual; a
batch norm, hardswish or SiLU in between) a constant ``mul`` is inserted in front of the
consumers, a float op at run time.

Run it on the exported float model before ``prepare_pt2e``; it works with any quantizer.

>>> import torch
>>> class Outlier(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.norm, self.fc = torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)
...     def forward(self, x):
...         return self.fc(self.norm(x))
>>> m = Outlier().eval()
>>> with torch.no_grad():
...     _ = m.norm.weight[0].fill_(50.0)          # one outlier channel
>>> data = [torch.randn(4, 8) for _ in range(3)]
>>> gm = torch.export.export(m, (data[0],)).module()
>>> smooth = SmoothQuant(data, alpha=0.5)
>>> smooth(gm).modified, torch.allclose(gm(data[0]), m(data[0]), atol=1e-4)
(True, True)
>>> [(s.layers, s.how) for s in smooth.layers]
[(('fc',), 'folded into layer_norm')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .equalization import (
    Consumer,
    ScaledLayer,
    _drop_dead_constants,
    _in_range,
    channel_axis_of_input,
    constant,
    consumer,
    scale_input_channels,
)
from .errors import ArgumentValueError
from .layerwise import batch_args
from .ops import CONV_OPS

__all__ = ["SmoothQuant", "channel_absmax", "smoothing_scales"]


class _AbsMax(Interpreter):
    """Runs the graph and keeps, per watched node, the running max of |value| per channel."""

    def __init__(self, gm: GraphModule, watch: dict[Node, int]) -> None:
        super().__init__(gm)
        self.watch = watch
        self.amax: dict[Node, torch.Tensor] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        axis = self.watch.get(n)
        if axis is not None and isinstance(out, torch.Tensor):
            a = out.detach().abs().float().movedim(axis, 0).flatten(1).amax(1)
            prev = self.amax.get(n)
            self.amax[n] = a if prev is None else torch.maximum(prev, a)
        return out


def channel_absmax(gm: GraphModule, watch: dict[Node, int],
                   calibration_data: Sequence[Any]) -> dict[Node, torch.Tensor]:
    """``max |value|`` per channel (axis ``watch[node]``) of each watched node over the batches.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.ReLU(), (torch.randn(1, 3),)).module()
    >>> x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    >>> channel_absmax(gm, {x: -1}, [torch.tensor([[1.0, -5.0, 2.0]])])[x]
    tensor([1., 5., 2.])
    """
    rec = _AbsMax(gm, watch)
    with torch.no_grad():
        for batch in calibration_data:
            rec.run(*batch_args(batch))
    return rec.amax


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``; 1 where either range is 0.

    >>> smoothing_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 1.0]), 0.5)
    tensor([4.0000, 0.5000, 1.0000])
    """
    x, w = x_absmax.double(), w_absmax.double()
    ok = (x > 0) & (w > 0)
    s = x.clamp(min=1e-12) ** alpha / w.clamp(min=1e-12) ** (1.0 - alpha)
    return torch.where(ok, s, torch.ones_like(s)).clamp(1e-5, 1e5).float()


class SmoothQuant(PassBase):
    """SmoothQuant on the exported float model, calibrated on ``calibration_data``
    (a list of batches: tuples of arguments, or tensors).

    ``alpha`` is the migration strength (0.5 in the paper for most models). Linears
    and constant-weight ``matmul`` s are smoothed; ``convs=True`` also smooths convs
    (per input channel, the data-aware cousin of cross-layer equalization). After the
    pass, ``layers`` says what was scaled and where each inverse went. Example: see the
    module docstring.
    """

    def __init__(self, calibration_data: Sequence[Any], *, alpha: float = 0.5,
                 convs: bool = False) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ArgumentValueError(f"SmoothQuant(alpha={alpha!r}): pass a migration strength in [0, 1]")
        self.calibration_data = list(calibration_data)
        if not self.calibration_data:
            raise ArgumentValueError("SmoothQuant got no calibration_data; pass a list of batches")
        self.alpha = alpha
        self.convs = convs
        self.layers: tuple[ScaledLayer, ...] = ()

    def _groups(self, gm: GraphModule) -> dict[Node, list[Consumer]]:
        groups: dict[Node, list[Consumer]] = {}
        for node in gm.graph.nodes:
            c = consumer(node)
            if c is None or (node.target in CONV_OPS and not self.convs):
                continue
            act = node.args[0]
            if isinstance(act, Node):
                groups.setdefault(act, []).append(c)
        # one scale per activation: every reader must see channels on the same axis
        return {a: cs for a, cs in groups.items()
                if len({channel_axis_of_input(c) for c in cs}) == 1}

    def call(self, graph_module: GraphModule) -> PassResult:
        """Measure ``max|X_j|`` of every smoothed layer's input, then scale."""
        groups = self._groups(graph_module)
        amax = channel_absmax(graph_module, {a: channel_axis_of_input(cs[0]) for a, cs in groups.items()},
                              self.calibration_data)
        done = []
        for act, cs in groups.items():
            if act not in amax:
                continue
            w_max = torch.stack([_in_range(constant(c.weight), c.in_axis) for c in cs]).amax(0)
            if w_max.numel() != amax[act].numel():
                continue
            s = smoothing_scales(amax[act], w_max, self.alpha)
            done.append(scale_input_channels(graph_module, act, cs, s))
        self.layers = tuple(done)
        if done:
            _drop_dead_constants(graph_module)
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, bool(done))
