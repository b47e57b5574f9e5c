"""What an observer costs per calibration batch, and how exactly merged histograms match.

For MinMaxObserver, HistogramObserver, PercentileObserver and MSEObserver:

* time of one ``forward`` (update) on a float32 activation of N elements, the
  median and the min..max over repeats, single-threaded and with all threads;
* bytes allocated by one update (torch profiler, CPU memory) and the bytes of
  state the observer keeps;
* time of ``calculate_qparams`` (the range search; once per observer, at convert).

Then the histogram merge rule of ``pt2e.distributed`` (re-bin each rank's
histogram onto the union range and sum) against one process observing the same
batches: the worst relative difference of the resulting scale over many datasets.

    .venv/bin/python benchmarks/observer_cost.py            # figures in BENCHMARKS.md
    .venv/bin/python benchmarks/observer_cost.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from observers import HistogramObserver, MinMaxObserver, MSEObserver, PercentileObserver

OBSERVERS: dict[str, Callable[[], torch.nn.Module]] = {
    "MinMaxObserver": MinMaxObserver,
    "HistogramObserver(bins=2048)": HistogramObserver,
    "PercentileObserver(99.99)": PercentileObserver,
    "MSEObserver(100 candidates)": MSEObserver,
}
SIZES = {"64K (1x256x16x16)": (1, 256, 16, 16), "1M (16x64x32x32)": (16, 64, 32, 32)}


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {' '.join(wanted)}"


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def allocated_bytes(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())


def state_bytes(module: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


def fmt_ms(stats: tuple[float, float, float]) -> str:
    median, low, high = (1e3 * s for s in stats)
    return f"{median:.3f} ({low:.3f}..{high:.3f})"


def cost_table(repeats: int) -> None:
    print("| observer | input | update ms, 1 thread: median (min..max) | update ms, "
          f"{torch.get_num_threads()} threads | allocated per update | state | "
          "calculate_qparams ms (1 thread) |")
    print("|---|---|---|---|---|---|---|")
    threads = torch.get_num_threads()
    for size_name, shape in SIZES.items():
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(shape, generator=g) * (1 + i / 10) for i in range(4)]
        for name, make in OBSERVERS.items():
            obs = make()
            for x in batches:
                obs(x)
            update = functools.partial(obs, batches[-1] * 1.05)  # wider: the histograms re-bin
            torch.set_num_threads(1)
            one = timed(update, repeats)
            qparams = timed(obs.calculate_qparams, max(3, repeats // 10))
            torch.set_num_threads(threads)
            many = timed(update, repeats)
            alloc = allocated_bytes(update)
            print(f"| {name} | {size_name} | {fmt_ms(one)} | {fmt_ms(many)} | "
                  f"{alloc / 2**20:.2f} MiB | {state_bytes(obs) / 2**10:.1f} KiB | "
                  f"{fmt_ms(qparams)} |")


def _merged(parts: list[list[torch.Tensor]]) -> HistogramObserver:
    """The pt2e.distributed histogram rule, run in one process on the ranks' observers."""
    ranks = [HistogramObserver() for _ in parts]
    for obs, batches in zip(ranks, parts):
        for x in batches:
            obs(x)
    low = torch.stack([o.min_val for o in ranks]).min()
    high = torch.stack([o.max_val for o in ranks]).max()
    total = torch.zeros(ranks[0].bins)
    for obs in ranks:
        same = bool(obs.min_val == low) and bool(obs.max_val == high)
        total += obs.histogram if same else obs._rebin(obs.min_val, obs.max_val, low, high)
    merged = HistogramObserver()
    merged.histogram.copy_(total)
    merged.min_val.copy_(low)
    merged.max_val.copy_(high)
    return merged


def merge_deviation(seeds: int) -> None:
    kinds = {
        "normal": lambda x, i: x,
        "growing range": lambda x, i: x * (1 + i),
        "student-t df=2": lambda x, i: torch.distributions.StudentT(2.0).sample(x.shape),
        "relu, alternating scale": lambda x, i: torch.relu(x) * (3 if i % 2 else 1),
    }
    print("| data | ranks | datasets | worst relative scale difference | worst zero-point difference |")
    print("|---|---|---|---|---|")
    for kind, make in kinds.items():
        for world in (2, 4):
            worst_scale, worst_zp = 0.0, 0
            for seed in range(seeds):
                torch.manual_seed(seed)
                batches = [make(torch.randn(2048), i) for i in range(8)]
                single = HistogramObserver()
                for x in batches:
                    single(x)
                merged = _merged([batches[r::world] for r in range(world)])
                (s1, z1), (s2, z2) = single.calculate_qparams(), merged.calculate_qparams()
                worst_scale = max(worst_scale, abs(float(s2 - s1)) / float(s1))
                worst_zp = max(worst_zp, abs(int(z2) - int(z1)))
            print(f"| {kind} | {world} | {seeds} | {100 * worst_scale:.3f}% | {worst_zp} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and datasets")
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}; torch {torch.__version__}\n")
    cost_table(repeats=10 if args.quick else 50)
    print()
    merge_deviation(seeds=3 if args.quick else 20)


if __name__ == "__main__":
    main()
