"""PT2E quantization for the OpenVINO backend (``python -m tutorials.openvino``).

The flow: export -> ``prepare_pt2e(model, OpenVINOQuantizer(mode=...))`` -> calibrate
-> ``convert_pt2e(..., fold_quantize=False)`` -> :func:`lowering.to_openvino`, which
runs ``torch.export`` + ``openvino.convert_model`` + ``Core().compile_model`` and reads
the compiled model's runtime graph: every convolution / fully-connected / matmul
layer and the precision OpenVINO really ran it in.

Why not ``torch.compile(model, backend="openvino")`` (the route older tutorials
show): on torch 2.13 it raises inside Dynamo for CNNs, passes weights as runtime
inputs (so no int8 kernels) and silently falls back to eager PyTorch on any
conversion error. See ``docs/openvino.md``.
"""

from __future__ import annotations

import torch
from torch import nn

from lowering import check_openvino_int8, to_openvino
from pt2e import convert_pt2e, prepare_pt2e
from pt2e.cpu import cpu_has_vnni
from quantizers import OpenVINOQuantizer, QuantizationMode
from tutorials.ptq import sqnr_db


class Block(nn.Module):
    """A small CNN stem plus a pre-norm attention block (conv, linear, matmul, LayerNorm)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.LayerNorm(width)
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)   # (batch, tokens, width)
        h = self.norm(t)
        att = torch.softmax(torch.matmul(self.q(h), self.k(h).transpose(1, 2)) * h.shape[-1] ** -0.5, -1)
        t = t + torch.matmul(att, self.v(h))
        return self.head(t.mean(1))


def main(width: int = 16, batch: int = 8, size: int = 8) -> dict[str, float]:
    torch.manual_seed(0)
    model = Block(width).eval()
    x = torch.randn(batch, 3, size, size)
    expected = model(x)
    result: dict[str, float] = {}
    for mode in (QuantizationMode.INT8_SYM, QuantizationMode.INT8_TRANSFORMER, QuantizationMode.INT8WO_SYM):
        # without VNNI OpenVINO's int8 kernels saturate full-range weights: halve them all there
        fix = {"overflow_fix": "enable"} if not cpu_has_vnni() and mode is not QuantizationMode.INT8WO_SYM else {}
        quantizer = OpenVINOQuantizer(mode=mode, **fix)
        # quantizer.set_ignored_scope(names=["linear_3"])  # e.g. keep the head float
        prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
        for _ in range(4):                      # calibration
            prepared(torch.randn(batch, 3, size, size))
        prepared(x)
        converted = convert_pt2e(prepared, fold_quantize=False)   # OpenVINO wants float w -> q -> dq
        ov_model = to_openvino(converted, (x,))                  # inference_precision="f32"
        print(f"--- {mode.name}")
        print(ov_model.report)
        problems = check_openvino_int8(converted, ov_model)
        assert problems == [], problems
        result[f"sqnr_{mode.value}_db"] = sqnr_db(expected, ov_model(x))
        print(f"SQNR vs float: {result[f'sqnr_{mode.value}_db']:.1f} dB")
    return result


if __name__ == "__main__":
    main()
