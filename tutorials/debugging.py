"""Debugging a quantized model: which layer loses the accuracy, and keeping it float.

Run it: ``python -m tutorials.debugging [output_dir]``. It

1. exports a small model whose middle layer sees one huge outlier channel,
2. stamps numeric debug handles and keeps a float copy,
3. quantizes with the X86 Inductor quantizer and prints the per-layer table
   (worst first: the layer that *adds* the error, not the ones that inherit it),
4. saves the table as Markdown/CSV/JSON and a PNG plot (needs ``pt2e[plot]``),
5. lets the accuracy-aware fallback keep the fewest layers float for a target SQNR.
"""

from __future__ import annotations

import copy
import pathlib
import sys
import tempfile
from typing import Any

import torch
from torch import nn

from pt2e import (
    accuracy_aware_fallback,
    compare,
    convert_pt2e,
    generate_numeric_debug_handle,
    prepare_pt2e,
    quantization_report,
)
from pt2e.accuracy import run_batches
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)


class Net(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.fc1, self.mid, self.head = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 8)
        gain = torch.ones(width)
        gain[0] = 1000.0  # one outlier channel: the mid layer's input range is all outlier
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.mid.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(torch.relu(self.fc1(x)) * self.gain)))


def quantizer() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range()))


def main(out_dir: str | pathlib.Path | None = None, batches: int = 4) -> dict[str, Any]:
    torch.manual_seed(0)
    out = pathlib.Path(out_dir or tempfile.mkdtemp(prefix="pt2e_debugging_"))
    out.mkdir(parents=True, exist_ok=True)
    calib = [torch.randn(8, 16) for _ in range(batches)]
    evaluation = [torch.randn(8, 16) for _ in range(batches)]

    # 1-2: export, stamp handles (they survive prepare/convert), keep a float copy
    ep = torch.export.export(Net().eval(), (calib[0],))
    generate_numeric_debug_handle(ep)
    float_model = copy.deepcopy(ep.module())

    # 3: quantize everything and look at the per-layer table
    prepared = prepare_pt2e(ep.module(), quantizer())
    run_batches(prepared, calib)
    quantized = convert_pt2e(prepared)
    print(quantization_report(quantized))
    table = compare(float_model, quantized, evaluation)
    print(table)

    # 4: save it
    saved = [table.save(out / f"layers{ext}") for ext in (".md", ".csv", ".json")]
    try:
        saved.append(table.save(out / "layers.png"))
    except Exception as e:  # matplotlib missing: the message says how to install it
        print(e)

    # 5: keep the fewest most-sensitive layers float until the output SQNR reaches 25 dB
    result = accuracy_aware_fallback(float_model, quantizer(), calib, eval_data=evaluation,
                                     target_sqnr=25.0)
    print(result.report)
    return {"worst": table.layers[0].module, "saved": saved, "report": result.report}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
