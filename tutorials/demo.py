"""End-to-end demo: train a CNN on scikit-learn digits, quantize to int8, run it with Inductor.

Run with ``make demo`` (or ``python -m tutorials.demo``). Steps:

1. train a small CNN on ``sklearn.datasets.load_digits`` (8x8 images upsampled to 16x16);
2. export it, annotate with :class:`quantizers.X86InductorQuantizer`, calibrate, convert;
3. compile the float and the int8 model with Inductor (freezing on, via
   :func:`lowering.compile_x86`);
4. print one table: accuracy, single-threaded latency (medians of interleaved
   rounds), model size on disk, and the oneDNN int8 kernels the compiled code calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lowering import compile_x86
from pt2e import convert_pt2e, prepare_pt2e
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)


class DigitsCNN(nn.Module):
    """Wide enough (32-64 channels) that int8 convolutions beat fp32 on a CPU."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 16, 16) float tensors in [0, 1], split 75/25 into train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.75 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(fn, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    correct = 0
    for i in range(0, len(x) - batch + 1, batch):  # full batches only: one compiled shape
        correct += int((fn(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / (len(x) // batch * batch)


@torch.no_grad()
def interleaved_medians(fns: dict[str, object], x: torch.Tensor, rounds: int, iters: int) -> dict[str, float]:
    """Median ms per call of each function; variants alternate within every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(x)  # type: ignore[operator]
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x)  # type: ignore[operator]
            times[name].append((time.perf_counter() - t0) * 1e3 / iters)
    return {k: statistics.median(v) for k, v in times.items()}


def weights_mb(model: nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def saved_size_mb(model: nn.Module, args: tuple[torch.Tensor, ...]) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.pt2")
        torch.export.save(torch.export.export(model, args), path)
        return os.path.getsize(path) / 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    # torch's own int8 lowering warns about an internal tensor copy; not ours to fix
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")

    torch.manual_seed(0)
    torch.set_num_threads(1)  # single-threaded: stable numbers on a shared machine
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_digits_tensors()
    model = DigitsCNN(args.width)
    train(model, x_tr, y_tr, args.epochs)
    example = (x_te[: args.batch],)

    # quantize: export -> annotate + observe -> calibrate -> convert
    config = get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range())
    quantizer = X86InductorQuantizer().set_global(config)
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        # the exported graph is specialised to the example batch size: calibrate on full batches
        full = x_tr[: len(x_tr) // args.batch * args.batch]
        for batch in tqdm(full.split(args.batch), desc="calibrating", unit="batch"):
            prepared(batch)
    converted = convert_pt2e(prepared)  # keeps int8 weights only

    print("compiling fp32 and int8 models with Inductor (freezing on)...", flush=True)
    fp32_compiled = compile_x86(model, example)
    int8_compiled = compile_x86(converted, example)

    acc_fp32 = accuracy(model, x_te, y_te, args.batch)
    acc_int8 = accuracy(int8_compiled, x_te, y_te, args.batch)
    ms = interleaved_medians(
        {"fp32 eager": model, "fp32 compiled": fp32_compiled, "int8 compiled": int8_compiled},
        example[0], args.rounds, args.iters,
    )
    size_fp32, size_int8 = saved_size_mb(model, example), saved_size_mb(converted, example)

    w = 36
    print()
    print(f"{'DigitsCNN, batch ' + str(args.batch) + ', 1 thread':<{w}} {'fp32':>10} {'int8':>10}")
    print(f"{'test accuracy':<{w}} {acc_fp32:>10.2%} {acc_int8:>10.2%}")
    print(f"{'latency eager (ms, median)':<{w}} {ms['fp32 eager']:>10.3f} {'-':>10}")
    print(f"{'latency compiled (ms, median)':<{w}} {ms['fp32 compiled']:>10.3f} {ms['int8 compiled']:>10.3f}")
    print(f"{'speedup vs fp32 eager':<{w}} {ms['fp32 eager'] / ms['fp32 compiled']:>9.2f}x "
          f"{ms['fp32 eager'] / ms['int8 compiled']:>9.2f}x")
    print(f"{'speedup int8 vs fp32 compiled':<{w}} {'':>10} {ms['fp32 compiled'] / ms['int8 compiled']:>9.2f}x")
    print(f"{'weights + qparams (MB)':<{w}} {weights_mb(model):>10.2f} {weights_mb(converted):>10.2f}")
    print(f"{'torch.export.save file (MB)':<{w}} {size_fp32:>10.2f} {size_int8:>10.2f}")
    print(f"compiled kernels: {int8_compiled.kernels}")
    if x86_needs_reduce_range():
        print("note: this CPU has no VNNI, so activations use 7 bits (reduce_range=True)")
    print(f"total demo time: {time.perf_counter() - t_start:.0f} s")
    return {"acc_fp32": acc_fp32, "acc_int8": acc_int8, **ms}


if __name__ == "__main__":
    main()
