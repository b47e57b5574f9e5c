"""Quick start: int4 weight-only quantization of a toy model on CPU (``python -m tutorials.quick_start``).

The seed's first example, on a CPU, for a bfloat16 and for a float32 model:

1. ``quantize_(model, Int4WeightOnlyConfig(group_size=32))`` swaps each
   ``nn.Linear`` weight for an int4 tensor subclass (the module stays ``nn.Linear``);
2. ``torch.save`` shows the file shrinking to about a quarter of bfloat16 (plus
   one bfloat16 scale and zero point per 32 weights);
3. both models are compiled (``torch.compile(fullgraph=True)``) and timed at
   batch 1, single-threaded, interleaved.

A float32 model runs the int4 kernel with bfloat16 activations and casts back:
torch's CPU int4 kernel is an order of magnitude slower with float32 ones (see
``docs/eager.md``). Options: ``--size 256`` for a fast run, ``--rounds``,
``--dtypes bfloat16``, ``--no-compile``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from quantizers import Int4WeightOnlyConfig, quantize_


class ToyLinearModel(nn.Module):
    """Two bias-free linears ``m -> n -> k``: the seed's toy model."""

    def __init__(self, m: int = 64, n: int = 32, k: int = 64) -> None:
        super().__init__()
        self.linear1 = nn.Linear(m, n, bias=False)
        self.linear2 = nn.Linear(n, k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def file_size_mb(model: nn.Module) -> float:
    """Size of ``torch.save(model.state_dict())`` in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path) / 2**20


def median_ms(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median per-call time of each function in ms, the functions interleaved round by round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def cpu_line() -> str:
    """The CPU this ran on, as the figures need it."""
    from pt2e.cpu import cpu_has_vnni, cpu_model

    vnni = cpu_has_vnni()
    return (f"{cpu_model()}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"VNNI {'yes' if vnni else 'no'}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def run(dtype: torch.dtype, size: int, group_size: int, rounds: int, compile: bool) -> dict[str, float]:
    """Quantize, save and time one toy model of ``dtype``; returns the figures it prints."""
    torch.manual_seed(0)
    float_model = ToyLinearModel(size, size, size).eval().to(dtype)
    model = copy.deepcopy(float_model)
    quantize_(model, Int4WeightOnlyConfig(group_size=group_size))
    print(f"\n== {dtype} model ==")
    print(model.linear1)

    bf16_mb = file_size_mb(copy.deepcopy(float_model).to(torch.bfloat16))
    int4_mb = file_size_mb(model)
    print(f"int4 model size: {int4_mb:.2f} MB vs bfloat16 {bf16_mb:.2f} MB "
          f"(int4/bf16 = {int4_mb / bf16_mb:.3f})")

    x = torch.randn(1, size, dtype=dtype)
    with torch.no_grad():
        ref, out = float_model(x).float(), model(x).float()
    sqnr = float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))
    print(f"SQNR of the int4 model vs float: {sqnr:.1f} dB")

    wrap = (lambda m: torch.compile(m, fullgraph=True)) if compile else (lambda m: m)
    fast_float, fast_int4 = wrap(float_model), wrap(model)
    with torch.no_grad():
        for _ in range(3):  # compile and warm up
            fast_float(x)
            fast_int4(x)
        times = median_ms({"float": lambda: fast_float(x), "int4": lambda: fast_int4(x)},
                          rounds=rounds, calls=20)
    kind = "compiled" if compile else "eager"
    print(f"{kind} {dtype} float: {times['float']:.3f} ms, {kind} int4: {times['int4']:.3f} ms, "
          f"speedup {times['float'] / times['int4']:.2f}x (batch 1, median of {rounds} rounds)")
    return {"bf16_mb": bf16_mb, "int4_mb": int4_mb, "sqnr_db": sqnr,
            "float_ms": times["float"], "int4_ms": times["int4"]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(cpu_line())
    return {name: run(getattr(torch, name), args.size, args.group_size, args.rounds,
                      compile=not args.no_compile)
            for name in args.dtypes}


if __name__ == "__main__":
    main()
