"""prepare_pt2e + convert_pt2e wall time vs graph size, ours vs torchao, side by side.

Both flows use the same quantizer (ExecuTorch's XNNPACKQuantizer, written against
torchao's API, which our prepare_pt2e accepts too), on deep MLPs of growing depth.
The time includes that quantizer's annotate(), identical in both flows.
Export time is excluded; each figure is the median of --repeats runs, variants
interleaved.

    .venv/bin/python -m benchmarks.prepare_convert_scaling [--quantizer simple|xnnpack]
        [--depths 62 125 250 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn


def deep_mlp(depth: int, width: int = 16) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _quantizer():
    """ExecuTorch's XNNPACKQuantizer with min/max activation observers.

    Its default HistogramObserver spends most of convert in its range search (the
    same observer cost in both flows); min/max keeps the figure about the framework.
    """
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(config.input_activation,
                              observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    q = XNNPACKQuantizer()
    q.set_global(config)
    return q


def _simple_quantizer(api):
    """A minimal linear/relu quantizer built on ``api`` (our pt2e or torchao's classes)."""
    quantizer_mod, observer_mod = api
    act = quantizer_mod.QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=observer_mod.MinMaxObserver)
    weight = quantizer_mod.QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
        ch_axis=0, observer_or_fake_quant_ctr=observer_mod.PerChannelMinMaxObserver)

    class Simple(quantizer_mod.Quantizer):
        def annotate(self, model):
            for n in model.graph.nodes:
                if n.target == torch.ops.aten.linear.default:
                    n.meta["quantization_annotation"] = quantizer_mod.QuantizationAnnotation(
                        input_qspec_map={n.args[0]: act, n.args[1]: weight}, output_qspec=act,
                        _annotated=True)
                elif n.target == torch.ops.aten.relu.default:
                    n.meta["quantization_annotation"] = quantizer_mod.QuantizationAnnotation(
                        input_qspec_map={n.args[0]: act}, output_qspec=act, _annotated=True)
            return model

        def validate(self, model):
            pass

    return Simple()


def _flows():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as ao_prepare

    from pt2e import convert_pt2e, prepare_pt2e

    return {"pt2e (ours)": (prepare_pt2e, convert_pt2e), "torchao": (ao_prepare, ao_convert)}


def _apis():
    import torchao.quantization.pt2e as ao_obs
    import torchao.quantization.pt2e.quantizer as ao_q

    import observers
    import pt2e.quantizer

    return {"pt2e (ours)": (pt2e.quantizer, observers), "torchao": (ao_q, ao_obs)}


def time_flow(gm, prepare, convert, x, make_quantizer=_quantizer) -> float:
    gm = copy.deepcopy(gm)
    start = time.perf_counter()
    prepared = prepare(gm, make_quantizer())
    prepared(x)
    convert(prepared)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depths", type=int, nargs="+", default=[62, 125, 250, 500])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quantizer", choices=["simple", "xnnpack"], default="simple",
                        help="simple: a linear/relu quantizer written on each flow's own "
                        "classes (framework cost only); xnnpack: ExecuTorch's quantizer in both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flows = _flows()
    apis = _apis()

    def make(name):
        if args.quantizer == "xnnpack":
            return _quantizer
        return lambda: _simple_quantizer(apis[name])

    warm = torch.export.export(deep_mlp(2), (torch.randn(2, 16),)).module()
    for name, (prepare, convert) in flows.items():  # imports and first-call caches
        time_flow(warm, prepare, convert, torch.randn(2, 16), make(name))
    print(f"quantizer: {args.quantizer}; median of {args.repeats}, torch threads 1")
    print(f"| layers | {' | '.join(f'{k} (s)' for k in flows)} | torchao / ours |")
    print(f"|---|{'---|' * len(flows)}---|")
    for depth in args.depths:
        x = torch.randn(2, 16)
        gm = torch.export.export(deep_mlp(depth), (x,)).module()
        times: dict[str, list[float]] = {k: [] for k in flows}
        for _ in range(args.repeats):
            for name, (prepare, convert) in flows.items():
                times[name].append(time_flow(gm, prepare, convert, x, make(name)))
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
        cells = " | ".join(f"{med[k]:.2f} (±{100 * spread[k]:.0f}%)" for k in flows)
        print(f"| {depth} | {cells} | {med['torchao'] / med['pt2e (ours)']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
