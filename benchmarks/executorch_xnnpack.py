"""ExecuTorch/XNNPACK: fp32 .pte vs int8 .pte, ours vs ExecuTorch's own quantizer (through torchao).

``python -m benchmarks.executorch_xnnpack [--quick] [--out results.json]``

Two worker processes build the ``.pte`` files: ``ours`` (our XNNPACKQuantizer,
prepare/convert and :func:`lowering.to_executorch`; it also writes the fp32
``.pte``) and ``executorch`` (ExecuTorch's XNNPACKQuantizer with torchao's
prepare/convert and ExecuTorch's stock ``to_edge_transform_and_lower``).
Both use the same per-channel static int8 recipe and calibration data. The
parent process then loads every ``.pte`` in ExecuTorch's runtime and times them
interleaved: in each round every variant runs ``--iters`` calls and the round's
median per call is kept; figures are medians over rounds, and the noise column
is the interquartile range over rounds divided by the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# --- models --------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class SmallResNet(nn.Module):
    def __init__(self, width: int = 64, classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(ConvBlock(width), nn.MaxPool2d(2), ConvBlock(width))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class MLP(nn.Module):
    def __init__(self, d: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 256))

    def forward(self, x):
        return self.net(x)


class TransformerBlock(nn.Module):
    def __init__(self, d: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


MODELS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "resnet_w64_64px": (SmallResNet, (1, 3, 64, 64)),
    "mlp_1024": (MLP, (8, 1024)),
    "transformer_d256_t64": (TransformerBlock, (1, 64, 256)),
}
QUICK = {"mlp_1024"}


def _model_and_data(name: str) -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    calib = [torch.randn(*shape) for _ in range(8)]
    return model, calib, torch.randn(*shape)


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


# --- workers (one process per framework) -------------------------------------------------------


def _worker(framework: str, names: list[str], out_dir: Path) -> dict[str, Any]:
    from executorch.runtime import Runtime

    results: dict[str, Any] = {}
    for name in names:
        model, calib, x = _model_and_data(name)
        gm = torch.export.export(model, (calib[0],)).module()
        t0 = time.perf_counter()
        if framework == "ours":
            from lowering import to_executorch
            from pt2e import convert_pt2e, prepare_pt2e
            from quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

            q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(gm, q)
            for c in calib:
                prepared(c)
            converted = convert_pt2e(prepared)
            buf = to_executorch(converted, (x,)).buffer
            fp32 = to_executorch(model, (x,)).buffer
            (out_dir / f"{name}.fp32.pte").write_bytes(fp32)
        else:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer as EtQuantizer,
            )
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                get_symmetric_quantization_config as et_config,
            )
            from executorch.exir import to_edge_transform_and_lower
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as ao_prepare

            prepared = ao_prepare(gm, EtQuantizer().set_global(et_config(is_per_channel=True)))
            for c in calib:
                prepared(c)
            converted = ao_convert(prepared)
            ep = torch.export.export(converted, (x,))
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            buf = edge.to_executorch().buffer
        build_s = time.perf_counter() - t0
        path = out_dir / f"{name}.{framework}.pte"
        path.write_bytes(buf)
        program = Runtime.get().load_program(path.read_bytes())
        out = program.load_method("forward").execute([x])[0]
        with torch.no_grad():
            ref, pt = model(x), converted(x)
        results[name] = {
            "pte": str(path), "bytes": len(buf), "build_s": build_s,
            "sqnr_pte_vs_float_db": _sqnr(ref, out), "sqnr_converted_vs_float_db": _sqnr(ref, pt),
        }
        del program
    return results


# --- timing (parent process: ExecuTorch runtime only) ------------------------------------------


def _time_interleaved(variants: dict[str, tuple[Any, torch.Tensor]], rounds: int, iters: int) -> dict[str, dict[str, float]]:
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    for method, x in variants.values():
        for _ in range(3):
            method.execute([x])
    for _ in range(rounds):
        for key, (method, x) in variants.items():
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                method.execute([x])
                ts.append((time.perf_counter() - t0) * 1e3)
            per_round[key].append(statistics.median(ts))
    out = {}
    for key, vals in per_round.items():
        q = statistics.quantiles(vals, n=4) if len(vals) >= 2 else [vals[0]] * 3
        med = statistics.median(vals)
        out[key] = {"median_ms": med, "iqr_over_median": (q[2] - q[0]) / med}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model, few rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=["ours", "executorch"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args(argv)
    names = args.models or (sorted(QUICK) if args.quick else list(MODELS))

    if args.worker:
        print(json.dumps(_worker(args.worker, names, Path(args.dir))))
        return {}

    from executorch.runtime import Runtime

    work = Path(tempfile.mkdtemp(prefix="xnnpack_bench_"))
    built: dict[str, dict[str, Any]] = {}
    for framework in ("ours", "executorch"):
        cmd = [sys.executable, "-m", "benchmarks.executorch_xnnpack", "--worker", framework,
               "--dir", str(work), "--models", *names]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
        built[framework] = json.loads(proc.stdout.strip().splitlines()[-1])

    rounds = args.rounds or (5 if args.quick else 15)
    results: dict[str, Any] = {"machine": _machine(), "rounds": rounds, "iters": args.iters, "models": {}}
    print(f"{'model':22} {'variant':11} {'median ms':>10} {'noise':>6} {'.pte KiB':>9} {'SQNR dB':>8}")
    for name in names:
        programs, variants = [], {}
        files = {"fp32": work / f"{name}.fp32.pte", "ours int8": Path(built["ours"][name]["pte"]),
                 "ET int8": Path(built["executorch"][name]["pte"])}
        x = _model_and_data(name)[2]
        for key, path in files.items():
            program = Runtime.get().load_program(path.read_bytes())
            programs.append(program)  # keep every program alive while its method is used
            variants[key] = (program.load_method("forward"), x)
        timing = _time_interleaved(variants, rounds, args.iters)
        row: dict[str, Any] = {}
        for key, path in files.items():
            src = {"ours int8": built["ours"][name], "ET int8": built["executorch"][name]}.get(key, {})
            row[key] = {**timing[key], "bytes": path.stat().st_size,
                        "sqnr_pte_vs_float_db": src.get("sqnr_pte_vs_float_db"),
                        "sqnr_converted_vs_float_db": src.get("sqnr_converted_vs_float_db")}
            sq = row[key]["sqnr_pte_vs_float_db"]
            print(f"{name:22} {key:11} {row[key]['median_ms']:10.3f} {row[key]['iqr_over_median']:6.1%} "
                  f"{row[key]['bytes'] / 1024:9.1f} {'' if sq is None else f'{sq:8.1f}'}")
        results["models"][name] = row
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


def _machine() -> dict[str, Any]:
    import platform

    import executorch.version as etv

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "executorch": getattr(etv, "__version__", "?"),
            "python": platform.python_version()}


if __name__ == "__main__":
    main()
