"""PTQ for x86 CPUs through Inductor (``python -m tutorials.ptq_x86_inductor``).

After :mod:`tutorials.ptq`'s export -> prepare -> calibrate -> convert, the
converted graph is compiled by Inductor. Two things matter on x86:

* Inductor fuses quantize/dequantize into oneDNN int8 kernels only with
  ``freezing`` on; :func:`lowering.compile_x86` turns it on inside a scoped
  ``torch._inductor.config.patch`` and reports the int8 kernels it generated;
* CPUs without VNNI saturate uint8 x int8 products: quantize activations to 7 bits
  there (``reduce_range=x86_needs_reduce_range()``).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lowering import compile_x86
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)
from tutorials.ptq import sqnr_db


def main(width: int = 32, batch: int = 16) -> dict[str, float]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 8 * 8, 10),
    ).eval()
    x = torch.randn(batch, 3, 16, 16)

    config = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(),
                            X86InductorQuantizer().set_global(config))
    with torch.no_grad():
        prepared(x)
    converted = convert_pt2e(prepared)

    fp32 = compile_x86(model, (x,))
    int8 = compile_x86(converted, (x,))
    print("kernels in the int8 compiled code:", int8.kernels)

    def median_ms(fn, n: int = 20) -> float:
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(x)
            ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[n // 2]

    with torch.no_grad():
        db = sqnr_db(model(x), int8(x))
    result = {"sqnr_db": db, "fp32_ms": median_ms(fp32), "int8_ms": median_ms(int8)}
    print(f"SQNR int8 compiled vs float: {db:.1f} dB; "
          f"fp32 compiled {result['fp32_ms']:.2f} ms, int8 compiled {result['int8_ms']:.2f} ms")
    return result


if __name__ == "__main__":
    main()
