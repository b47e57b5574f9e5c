"""Post-training quantization (PTQ) with PT2E, step by step (``python -m tutorials.ptq``).

The flow is backend independent; only the quantizer says what the backend can run:

1. ``torch.export.export(model, args).module()`` -- an ATen-level graph;
2. ``prepare_pt2e(graph, quantizer)`` -- the quantizer annotates the graph and
   observers are inserted on the annotated edges;
3. calibrate: run representative data through the prepared model;
4. ``convert_pt2e(prepared)`` -- each observer becomes a quantize/dequantize pair
   (``torch.ops.quantized_decomposed``), weights are folded to int8 constants;
5. hand the converted graph to a backend (see ``tutorials/ptq_x86_inductor.py``).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from pt2e import convert_pt2e, prepare_pt2e
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio: higher is closer (30 dB ~ 3% relative error)."""
    reference, actual = reference.detach(), actual.detach()
    noise = (reference - actual).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def main() -> float:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()
    calibration = [torch.randn(8, 3, 16, 16) for _ in range(8)]
    example = (calibration[0],)

    # 1. capture; export fixes every size to the example's unless marked dynamic: the
    # batch may vary here (the example's batch must be at least 2 for that)
    batch = torch.export.Dim("batch")
    graph = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
    # 2. annotate + insert observers; the default x86 recipe: uint8 activations, int8 weights
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    # 3. calibrate
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    # 4. convert
    converted = convert_pt2e(prepared)

    ops = Counter(n.target.__name__ for n in converted.graph.nodes
                  if n.op == "call_function" and "quantized_decomposed" in str(n.target))
    print("quantize/dequantize ops in the converted graph:", dict(ops))
    print(quantizer.report())
    with torch.no_grad():
        db = sqnr_db(model(example[0]), converted(example[0]))
    print(f"SQNR of the converted model vs float: {db:.1f} dB")
    print("a batch of 3 gives", tuple(converted(torch.randn(3, 3, 16, 16)).shape))
    return db


if __name__ == "__main__":
    main()
