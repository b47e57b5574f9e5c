"""PT2E with the XPU backend through Inductor (``python -m tutorials.xpu_inductor``).

On a machine with an Intel GPU the flow is the seed tutorial's::

    quantizer = XPUInductorQuantizer().set_global(get_default_xpu_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model.to("xpu"), (x,)).module(), quantizer)
    prepared(x)                                  # calibrate
    converted = convert_pt2e(prepared)
    with torch.no_grad():
        y = torch.compile(converted)(x)          # Inductor -> oneDNN int8 kernels on XPU

What this script verifies *without XPU hardware* (the machines here have none):

* the annotation: signed int8 per-tensor activations, int8 per-channel symmetric
  weights, max pool left float (tests/quantizers/test_xpu_inductor_quantizer.py pins the
  graphs against torchao's XPU quantizer);
* that the converted graphs run with int8 kernels: CPU Inductor rejects int8-activation
  convolutions, OpenVINO's CPU plugin accepts them, so the same graph is lowered with
  :func:`lowering.to_openvino`, every conv/linear is checked to run in int8 from the
  runtime graph, and the output is compared with the float model (SQNR).

What it does **not** verify: that Inductor's XPU backend compiles these graphs, which
oneDNN XPU kernels it picks, XPU numerics (accumulation order, int8 rounding) or speed.
If ``torch.xpu.is_available()``, the script also runs the XPU path itself.
"""

from __future__ import annotations

import torch
from torch import nn

from lowering import check_openvino_int8, to_openvino
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import XPUInductorQuantizer, get_default_xpu_inductor_quantization_config
from tutorials.ptq import sqnr_db


def main(width: int = 16, batch: int = 8) -> dict[str, float]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 4 * 4, 10),
    ).eval()
    x = torch.randn(batch, 3, 8, 8)
    quantizer = XPUInductorQuantizer().set_global(get_default_xpu_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    prepared(x)
    converted = convert_pt2e(prepared)
    result = {"sqnr_eager_db": sqnr_db(model(x), converted(x))}

    ov_model = to_openvino(converted, (x,))     # re-expands the folded int8 weights itself
    print(ov_model.report)
    problems = check_openvino_int8(converted, ov_model)
    assert problems == [], problems
    result["sqnr_openvino_db"] = sqnr_db(model(x), ov_model(x))
    if hasattr(torch, "xpu") and torch.xpu.is_available():  # only on real hardware
        xpu_model = convert_pt2e(prepare_pt2e(
            torch.export.export(model.to("xpu"), (x.to("xpu"),)).module(), XPUInductorQuantizer()
            .set_global(get_default_xpu_inductor_quantization_config())))
        with torch.no_grad():
            result["sqnr_xpu_db"] = sqnr_db(model.cpu()(x), torch.compile(xpu_model)(x.to("xpu")).cpu())
    for k, v in result.items():
        print(f"{k}: {v:.1f}")
    return result


if __name__ == "__main__":
    main()
