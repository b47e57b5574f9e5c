"""Export an int8 model for ExecuTorch's XNNPACK delegate (``python -m tutorials.executorch_export``).

After :mod:`tutorials.ptq`'s export -> prepare -> calibrate -> convert, with
:class:`quantizers.XNNPACKQuantizer` choosing what XNNPACK runs in int8:

1. :func:`lowering.to_executorch` exports the converted graph, delegates it to
   XNNPACK and serializes a ``.pte`` file. It first checks the graph for
   quantization XNNPACK would reject when the file loads (uint8 activations,
   asymmetric weights) and gives each layer that shares a bias its own copy
   (XNNPACK would otherwise quantize the shared bias with the first layer's scale);
2. ``program.report`` says what runs inside XNNPACK and why anything stayed out;
3. ``program.runner()`` loads the ``.pte`` in ExecuTorch's runtime (the runner keeps
   the loaded program alive: a method whose program is garbage-collected crashes).

The same ``.pte`` runs on a phone with ExecuTorch's C++ runtime.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from lowering import to_executorch
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tutorials.ptq import sqnr_db


def main(width: int = 16, batch: int = 4, out_dir: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    ).eval()
    example = torch.randn(batch, 3, 16, 16)

    # 1. export, annotate for XNNPACK (int8 activations, per-channel int8 weights), calibrate, convert
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    with torch.no_grad():
        for _ in range(8):
            prepared(torch.randn(batch, 3, 16, 16))
    converted = convert_pt2e(prepared)

    # 2. lower to a .pte delegated to XNNPACK; the float model lowers the same way for comparison
    out = Path(out_dir or tempfile.mkdtemp())
    int8 = to_executorch(converted, (example,), path=out / "model_int8.pte")
    fp32 = to_executorch(model, (example,), path=out / "model_fp32.pte")
    print(int8.report.summary())

    # 3. run both in ExecuTorch's runtime
    x = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)
    int8_out = int8.runner()(x)
    fp32_out = fp32.runner()(x)
    result = {
        "sqnr_int8_db": sqnr_db(reference, int8_out),
        "sqnr_fp32_db": sqnr_db(reference, fp32_out),
        "int8_bytes": float(int8.size_bytes),
        "fp32_bytes": float(fp32.size_bytes),
    }
    print(f"int8 .pte: {int8.size_bytes} bytes, SQNR vs float {result['sqnr_int8_db']:.1f} dB; "
          f"fp32 .pte: {fp32.size_bytes} bytes; files in {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    main(width=args.width, out_dir=args.out_dir)
