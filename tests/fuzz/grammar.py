"""A grammar of small random models for the pipeline fuzzer.

A model is a :class:`ModelSpec`: an input kind, a tuple of layer steps and a few
flags. Specs are plain frozen data (tuples of strings and ints), so a failing
example prints as a spec that can be pasted back into the test as a regression
``@example``. :func:`build` turns a spec into an ``nn.Module`` (eval mode, random
weights and random batch-norm statistics from ``spec.seed``); :func:`model_specs`
is the hypothesis strategy.

The shape of the running value decides which steps may follow (``"img"`` is
N,C,H,W; ``"seq1d"`` N,C,L; ``"tok"`` N,T,D; ``"vec"`` N,F):

==========  ===================================================================
state       steps
==========  ===================================================================
img         conv (k, groups), bn, act, pool, add, mul (squeeze-excite gate), cat,
            permute (swap H and W), reuse (one conv applied twice), dead, gap,
            flatten, to_tok (reshape + permute to tokens)
seq1d       conv, bn, act, pool, add, cat, reuse, dead, gap, to_tok
tok         linear, act, attention, add, mul, reuse, dead, mean, flatten
vec         linear, bn, act, add, mul, cat, reuse, dead
==========  ===================================================================

``act`` is relu, hardswish or gelu. A spec with ``two_outputs`` also returns an
intermediate value; ``dynamic`` exports with a dynamic batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

Step = tuple[Any, ...]

ACTS = ("relu", "hardswish", "gelu")
INPUT_KINDS = ("img", "seq1d", "tok", "vec")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    kind: str
    channels: int
    size: int
    steps: tuple[Step, ...]
    two_outputs: bool = False
    dynamic: bool = False
    batch: int = 2
    seed: int = 0

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path (what the SQNR threshold depends on)."""
        weighted = {"conv": 1, "linear": 1, "add": 1, "mul": 2, "cat": 1, "reuse": 2, "attention": 3}
        return sum(weighted.get(s[0], 0) for s in self.steps)

    def input_shape(self, batch: int | None = None) -> tuple[int, ...]:
        n = self.batch if batch is None else batch
        c, s = self.channels, self.size
        return {"img": (n, c, s, s), "seq1d": (n, c, s), "tok": (n, s, c), "vec": (n, c)}[self.kind]


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "hardswish": nn.Hardswish(), "gelu": nn.GELU()}[name]


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class FuzzModel(nn.Module):
    """The module a :class:`ModelSpec` describes (see :func:`build`)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList()
        self.plan: list[tuple[str, Any]] = []  # (op, extra) aligned with self.layers
        state, shape = spec.kind, list(spec.input_shape())[1:]
        for step in spec.steps:
            state, shape = self._add(step, state, shape)

    # each step registers one module (nn.Identity for parameter-free ones) and a plan entry
    def _push(self, op: str, module: nn.Module, extra: Any = None) -> None:
        self.layers.append(module)
        self.plan.append((op, extra))

    def _weighted(self, state: str, cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Module:
        if state == "img":
            return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
        if state == "seq1d":
            return nn.Conv1d(cin, cout, k, padding=k // 2, groups=groups)
        return nn.Linear(cin, cout)

    def _add(self, step: Step, state: str, shape: list[int]) -> tuple[str, list[int]]:
        op = step[0]
        c = shape[-1] if state in ("tok", "vec") else shape[0]
        if op in ("conv", "linear"):
            cout, k, depthwise = step[1], step[2], step[3]
            groups = c if depthwise and state in ("img", "seq1d") else 1
            cout = c if groups > 1 else cout
            self._push("layer", self._weighted(state, c, cout, k, groups))
            return state, self._with_channels(state, shape, cout)
        if op == "bn":
            self._push("bn", nn.BatchNorm2d(c) if state == "img" else nn.BatchNorm1d(c))
            return state, shape
        if op == "act":
            self._push("layer", _act(step[1]))
            return state, shape
        if op == "pool":
            pool: nn.Module
            if state == "img":
                pool = nn.MaxPool2d(2) if step[1] == "max" else nn.AvgPool2d(2)
                return self._then("layer", pool, state, [c, shape[1] // 2, shape[2] // 2])
            pool = nn.MaxPool1d(2) if step[1] == "max" else nn.AvgPool1d(2)
            return self._then("layer", pool, state, [c, shape[1] // 2])
        if op == "add":  # residual: x + act(layer(x))
            branch = nn.Sequential(self._weighted(state, c, c, 1), _act(step[1]))
            return self._then("add", branch, state, shape)
        if op == "mul":  # gate: x * sigmoid(layer(pooled x)) for images, x * layer(x) otherwise
            if state == "img":
                gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Hardsigmoid())
            else:
                gate = nn.Sequential(self._weighted(state, c, c, 1), nn.Sigmoid())
            return self._then("mul", gate, state, shape)
        if op == "cat":  # two branches of half width, concatenated on the channel axis
            half = max(1, step[1] // 2)
            branches = nn.ModuleList([self._weighted(state, c, half, 1), self._weighted(state, c, half, 3)])
            dim = -1 if state in ("tok", "vec") else 1
            return self._then("cat", branches, state, self._with_channels(state, shape, 2 * half), dim)
        if op == "reuse":  # the same module applied twice (shared weight and bias)
            return self._then("reuse", self._weighted(state, c, c, 1), state, shape)
        if op == "dead":  # a branch whose result nobody reads
            return self._then("dead", self._weighted(state, c, c, 1), state, shape)
        if op == "permute":
            return self._then("permute", nn.Identity(), state, [shape[0], shape[2], shape[1]])
        if op == "gap":
            return self._then("gap", nn.Identity(), "vec", [c])
        if op == "mean":
            return self._then("mean", nn.Identity(), "vec", [c])
        if op == "flatten":
            n = 1
            for d in shape:
                n *= d
            return self._then("flatten", nn.Identity(), "vec", [n])
        if op == "to_tok":
            t = 1
            for d in shape[1:]:
                t *= d
            return self._then("to_tok", nn.Identity(), "tok", [t, c])
        if op == "attention":
            heads = step[1] if c % step[1] == 0 else 1
            return self._then("attention", _Attention(c, heads), state, shape)
        raise ValueError(f"unknown grammar step {step!r}")

    def _then(self, op: str, module: nn.Module, state: str, shape: list[int], extra: Any = None
              ) -> tuple[str, list[int]]:
        self._push(op, module, extra)
        return state, shape

    @staticmethod
    def _with_channels(state: str, shape: list[int], c: int) -> list[int]:
        return shape[:-1] + [c] if state in ("tok", "vec") else [c] + shape[1:]

    def forward(self, x: torch.Tensor) -> Any:
        tap = None
        for i, ((op, extra), layer) in enumerate(zip(self.plan, self.layers)):
            if op in ("layer", "bn"):
                x = layer(x)
            elif op == "add":
                x = x + layer(x)
            elif op == "mul":
                x = x * layer(x)
            elif op == "cat":
                x = torch.cat([layer[0](x), layer[1](x)], dim=extra)
            elif op == "reuse":
                x = layer(torch.relu(layer(x)))
            elif op == "dead":
                layer(x)
            elif op == "permute":
                x = x.permute(0, 1, 3, 2) if x.dim() == 4 else x.permute(0, 2, 1)
            elif op == "gap":
                x = x.mean(dim=tuple(range(2, x.dim())))
            elif op == "mean":
                x = x.mean(dim=1)
            elif op == "flatten":
                x = torch.flatten(x, 1)
            elif op == "to_tok":
                x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            elif op == "attention":
                x = x + layer(x)
            if i == len(self.plan) // 2 - 1:
                tap = x
        if self.spec.two_outputs and tap is not None:
            return x, tap
        return x


def build(spec: ModelSpec) -> FuzzModel:
    """The eval-mode model of ``spec``, with weights and batch-norm statistics drawn from ``spec.seed``."""
    torch.manual_seed(spec.seed)
    model = FuzzModel(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def inputs(spec: ModelSpec, batch: int | None = None, *, seed: int = 0) -> torch.Tensor:
    """A random input batch for ``spec`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*spec.input_shape(batch), generator=g)


# ---- the hypothesis strategy

_CHANNELS = st.sampled_from((4, 8, 12))


def _weighted_step(kind: str) -> st.SearchStrategy[Step]:
    name = "conv" if kind in ("img", "seq1d") else "linear"
    return st.tuples(st.just(name), _CHANNELS, st.sampled_from((1, 3)),
                     st.booleans() if name == "conv" else st.just(False))


def _steps_for(state: str, size: int) -> st.SearchStrategy[Step]:
    act = st.tuples(st.just("act"), st.sampled_from(ACTS))
    common = [
        _weighted_step(state), _weighted_step(state), act,
        st.tuples(st.just("add"), st.sampled_from(ACTS)),
        st.tuples(st.just("reuse")), st.tuples(st.just("dead")),
    ]
    if state in ("img", "seq1d", "vec"):
        common += [st.tuples(st.just("bn"))]
    if state in ("img", "seq1d", "vec"):
        common += [st.tuples(st.just("cat"), _CHANNELS)]
    if state in ("img", "tok", "vec"):
        common += [st.tuples(st.just("mul"))]
    if state in ("img", "seq1d") and size >= 4:
        common += [st.tuples(st.just("pool"), st.sampled_from(("max", "avg")))]
    if state == "img":
        common += [st.tuples(st.just("permute"))]
    if state == "tok":
        common += [st.tuples(st.just("attention"), st.sampled_from((1, 2)))]
    return st.one_of(*common)


_TRANSITIONS = {
    "img": (("gap", "vec"), ("flatten", "vec"), ("to_tok", "tok")),
    "seq1d": (("gap", "vec"), ("to_tok", "tok")),
    "tok": (("mean", "vec"), ("flatten", "vec")),
    "vec": (),
}


@st.composite
def model_specs(draw: st.DrawFn, max_steps: int = 6) -> ModelSpec:
    """Random :class:`ModelSpec` values: up to ``max_steps`` steps per shape state,
    with at most one change of state (img/seq1d -> vec or tokens, tokens -> vec)."""
    kind = draw(st.sampled_from(INPUT_KINDS))
    channels = draw(st.sampled_from((3, 4, 8)))
    size = draw(st.sampled_from((4, 8))) if kind != "vec" else 1
    steps: list[Step] = []
    state, cur_size = kind, size
    for _ in range(2):
        n = draw(st.integers(1 if not steps else 0, max_steps))
        for _ in range(n):
            step = draw(_steps_for(state, cur_size))
            if step[0] == "pool":
                cur_size //= 2
            steps.append(step)
        options = _TRANSITIONS[state]
        if not options or not draw(st.booleans()):
            break
        op, state = draw(st.sampled_from(options))
        steps.append((op,))
    if state in ("img", "seq1d", "tok"):  # end on a small tensor: a head
        steps.append(("gap",) if state != "tok" else ("mean",))
        state = "vec"
    # a model of dead branches only is the identity (kept as a regression in the test instead)
    if draw(st.booleans()) or all(s[0] == "dead" for s in steps):
        steps.append(("linear", draw(_CHANNELS), 1, False))
    return ModelSpec(
        kind=kind, channels=channels, size=size, steps=tuple(steps),
        two_outputs=draw(st.booleans()), dynamic=draw(st.booleans()),
        batch=draw(st.sampled_from((2, 3))), seed=draw(st.integers(0, 2**16)),
    )
