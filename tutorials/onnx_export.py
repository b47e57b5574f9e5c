"""Export an int8 model to ONNX and run it in onnxruntime (``python -m tutorials.onnx_export``).

After :mod:`tutorials.ptq`'s export -> prepare -> calibrate -> convert, with the
registry's ``"onnx"`` backend (the X86 recipe: uint8 activations, int8 per-channel
weights, which onnxruntime's x86 kernels take as u8 x s8):

1. capture with a dynamic batch (``torch.export.Dim``): a graph captured static keeps
   its batch size through quantization and export;
2. :func:`lowering.export_onnx` writes a QDQ ``.onnx`` (int8 weight initializers,
   inline) with our translations: narrow ranges clipped, dynamic quantization and
   int8 ``linear`` on ``MatMulInteger``;
3. ``onnx_model.report`` lists every compute node of onnxruntime's optimized graph,
   int8 or float, by the PyTorch node it came from; ``backend.check`` names any int8
   layer onnxruntime ran in float;
4. the file runs at any batch size, in onnxruntime (called like the model) or any
   other ONNX runtime.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from lowering import get_backend
from pt2e import prepare_pt2e
from tutorials.ptq import sqnr_db


def main(width: int = 32, batch: int = 4, out_dir: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    ).eval()
    example = torch.randn(batch, 3, 16, 16)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=256)},)

    # 1. capture (dynamic batch), annotate with the onnx backend's quantizer, calibrate, convert
    backend = get_backend("onnx")
    quantizer = backend.quantizer(**backend.recommended_config_kwargs())
    captured = torch.export.export(model, (example,), dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for _ in range(8):
            prepared(torch.randn(batch, 3, 16, 16))
    converted = backend.convert(prepared)

    # 2. export to ONNX (QDQ, weights inline) and read what onnxruntime runs in int8
    out = Path(out_dir or tempfile.mkdtemp())
    onnx_model = backend.lower(converted, (example,), path=out / "model_int8.onnx",
                               dynamic_shapes=dynamic)
    print(onnx_model.report)
    problems = backend.check(converted, onnx_model)

    # 3. run it at two batch sizes and compare with the float model
    result: dict[str, float] = {"int8_layers": float(len(onnx_model.report.int8_records)),
                                "float_layers_left": float(len(problems))}
    for b in (1, 2 * batch):
        x = torch.randn(b, 3, 16, 16)
        with torch.no_grad():
            result[f"sqnr_b{b}_db"] = sqnr_db(model(x), onnx_model(x))
    print(f"{onnx_model.size_bytes} bytes in {out / 'model_int8.onnx'}; SQNR vs float "
          + ", ".join(f"{k}={v:.1f}" for k, v in result.items() if k.startswith("sqnr")))
    for p in problems:
        print("ran in float:", p)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    main(width=args.width, out_dir=args.out_dir)
