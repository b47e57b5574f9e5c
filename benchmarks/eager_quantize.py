"""The eager ``quantize_`` workflow on CPU: kernel choice, and compiled float vs int4 / int8 models.

``python -m benchmarks.eager_quantize [--part kernels models] [--quick] [--rounds N] [--out f.json]``

Two parts, both single-threaded (``torch.set_num_threads(1)``), every variant of a
row interleaved with the others round by round; figures are medians over rounds
with the spread (interquartile range / median):

* ``kernels`` proves the kernel table (:mod:`quantizers.eager.kernels`): one
  4096x4096 linear at batch 1 and 32, eager, every usable kernel of each
  (scheme, activation dtype) forced in turn, beside dense ``F.linear`` in fp32 and
  bf16. Rerun it as an AVX2 machine without VNNI with
  ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``.
* ``models``: the seed's ``ToyLinearModel(1024, 1024, 1024)`` and a 4096x4096 linear,
  fp32 and bf16 models, batch 1 and 32, all ``torch.compile(fullgraph=True)``: float
  vs int4 weight-only (group 32) vs int8 weight-only vs int8 dynamic. torchao 0.18's
  CPU paths (``PrototypeInt4WeightOnlyConfig``, ``Int8WeightOnlyConfig``,
  ``Int8DynamicActivationInt8WeightConfig``; its ``Int4WeightOnlyConfig`` has no CPU
  kernel) run in a worker process whose rounds alternate with ours, so both sides
  are timed side by side; the worker times its own compiled float baseline too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Fn = Callable[[], object]


class ToyLinearModel(nn.Module):
    """The seed's toy model (the same as ``tutorials.quick_start.ToyLinearModel``)."""

    def __init__(self, m: int, n: int, k: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(m, n, bias=False)
        self.linear2 = nn.Linear(n, k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def cpu_info() -> dict[str, Any]:
    """What the figures depend on: the CPU, its ISA as ATen and oneDNN see it, torch, load."""
    from pt2e.cpu import cpu_has_vnni, cpu_model
    from quantizers.eager.kernels import int_mm_is_exact

    model = cpu_model()

    return {
        "cpu": model,
        "aten_capability": str(torch.backends.cpu.get_cpu_capability()),
        "vnni": cpu_has_vnni(),
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "int_mm_exact": int_mm_is_exact(),
        "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                           "MKL_ENABLE_INSTRUCTIONS") if k in os.environ},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg": [round(v, 1) for v in os.getloadavg()],
    }


def _calls_for(fn: Fn, target_s: float = 0.02) -> int:
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, min(200, int(target_s / max(once, 1e-6))))


def _one_round(fns: dict[str, Fn], calls: dict[str, int]) -> dict[str, float]:
    """One sample (ms per call) of every function, one after the other."""
    out = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(calls[name]):
            fn()
        out[name] = (time.perf_counter() - start) / calls[name] * 1e3
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    med = statistics.median(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 4 else [min(samples), med, max(samples)]
    return {"ms": med, "spread": (q[2] - q[0]) / med if med else 0.0, "n": len(samples)}


def _prepare(fns: dict[str, Fn]) -> dict[str, int]:
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        return {name: _calls_for(fn) for name, fn in fns.items()}


# --- part 1: kernels ------------------------------------------------------------------------------


def bench_kernels(size: int, batches: list[int], rounds: int) -> list[dict[str, Any]]:
    """Every usable kernel per (scheme, dtype) on one size x size linear, interleaved per batch."""
    from quantizers.eager.kernels import candidates, select_kernel
    from quantizers.eager.tensors import Int4WeightTensor, Int8DynamicWeightTensor, Int8WeightTensor

    torch.manual_seed(0)
    w32 = torch.randn(size, size) * 0.02
    builders = {
        "int4_weight_only": lambda w, k: Int4WeightTensor.from_float(w, group_size=32, kernel=k),
        "int8_weight_only": lambda w, k: Int8WeightTensor.from_float(w, kernel=k),
        "int8_dynamic": lambda w, k: Int8DynamicWeightTensor.from_float(w, kernel=k),
    }
    rows: list[dict[str, Any]] = []
    for batch in batches:
        x32 = torch.randn(batch, size)
        fns: dict[str, Fn] = {
            "dense fp32": functools.partial(F.linear, x32, w32),
            "dense bf16": functools.partial(F.linear, x32.bfloat16(), w32.bfloat16()),
        }
        meta: dict[str, dict[str, Any]] = {}
        for scheme, build in builders.items():
            for dtype in (torch.float32, torch.bfloat16):
                chosen = select_kernel(scheme, "cpu", dtype).name  # type: ignore[arg-type]
                for k in candidates(scheme, "cpu", dtype):  # type: ignore[arg-type]
                    key = f"{scheme} {str(dtype)[6:]} {k.name}"
                    q = build(w32.to(dtype), k.name)
                    fns[key] = functools.partial(F.linear, x32.to(dtype), q)
                    meta[key] = {"scheme": scheme, "dtype": str(dtype)[6:], "kernel": k.name,
                                 "op": k.op, "compute": str(k.compute_dtype_for(dtype))[6:],
                                 "chosen": k.name == chosen}
        calls = _prepare(fns)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        with torch.no_grad():
            for _ in range(rounds):
                for name, ms in _one_round(fns, calls).items():
                    samples[name].append(ms)
        base = statistics.median(samples["dense fp32"])
        for name, s in samples.items():
            summary = _summary(s)
            rows.append({"batch": batch, "name": name, **meta.get(name, {"kernel": name}), **summary,
                         "speedup_vs_fp32_dense": base / summary["ms"]})
        print(f"  kernels batch {batch}: done", file=sys.stderr)
    return rows


# --- part 2: compiled models, ours and torchao's ------------------------------------------------

# A single 4096x4096 layer called again and again keeps a quantized weight (16 MB int8,
# 8 MB int4) in a 32 MB L3 cache while the fp32 one (64 MB) streams from memory; the
# stack of 8 distinct layers streams every weight, like the decode step of a real model.
GROUPS = [(model, dtype, batch) for model in ("toy", "linear4096") for dtype in ("float32", "bfloat16")
          for batch in (1, 32)] + [("stack8x4096", dtype, 1) for dtype in ("float32", "bfloat16")]


def _model(name: str, dtype: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    small, big = (256, 1024) if quick else (1024, 4096)
    if name == "toy":
        m: nn.Module = ToyLinearModel(small, small, small)
    elif name == "linear4096":
        m = nn.Sequential(nn.Linear(big, big, bias=False))
    else:
        m = nn.Sequential(*(nn.Linear(big, big, bias=False) for _ in range(8)))
    return m.eval().to(getattr(torch, dtype))


def _in_features(m: nn.Module) -> int:
    first = next(mod for mod in m.modules() if isinstance(mod, nn.Linear))
    return first.in_features


def _variants(framework: str) -> dict[str, Callable[[], Any]]:
    """Config factories of one framework (torchao's only in its worker process)."""
    if framework == "ours":
        import quantizers.eager as ours

        return {"int4": functools.partial(ours.Int4WeightOnlyConfig, group_size=32),
                "int8_wo": ours.Int8WeightOnlyConfig,
                "int8_dyn": ours.Int8DynamicActivationInt8WeightConfig}
    import torchao.quantization as ao
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return {"int4": functools.partial(PrototypeInt4WeightOnlyConfig, group_size=32),
            "int8_wo": ao.Int8WeightOnlyConfig, "int8_dyn": ao.Int8DynamicActivationInt8WeightConfig}


def _quantize(framework: str, model: nn.Module, config: Any) -> None:
    if framework == "ours":
        import quantizers.eager as ours

        ours.quantize_(model, config)
    else:
        import torchao.quantization as ao

        ao.quantize_(model, config)


class Side:
    """One framework's compiled variants of the current group, timed one round at a time."""

    def __init__(self, framework: str, quick: bool) -> None:
        self.framework, self.quick = framework, quick
        self.fns: dict[str, Fn] = {}
        self.calls: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def setup(self, model_name: str, dtype: str, batch: int) -> dict[str, Any]:
        import copy

        self.fns, self.errors = {}, {}
        torch._dynamo.reset()
        base = _model(model_name, dtype, self.quick)
        x = torch.randn(batch, _in_features(base), dtype=getattr(torch, dtype))
        with torch.no_grad():
            ref = base(x).float()
        sqnr: dict[str, float] = {}
        models: dict[str, nn.Module] = {"float": base}
        for name, make in _variants(self.framework).items():
            m = copy.deepcopy(base)
            try:
                _quantize(self.framework, m, make())
                with torch.no_grad():
                    out = m(x).float()
                sqnr[name] = float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))
                models[name] = m
            except Exception as err:  # a framework without a CPU path for this row
                self.errors[name] = f"{type(err).__name__}: {str(err)[:160]}"
        for name, m in models.items():
            compiled = torch.compile(m, fullgraph=True)
            self.fns[name] = functools.partial(compiled, x)
        try:
            self.calls = _prepare(self.fns)
        except Exception as err:
            failed = {name: fn for name, fn in self.fns.items()}
            self.fns, self.calls = {}, {}
            for name in failed:
                self.errors.setdefault(name, f"compile: {type(err).__name__}: {str(err)[:160]}")
        return {"sqnr_db": sqnr, "errors": self.errors}

    def round(self) -> dict[str, float]:
        with torch.no_grad():
            return _one_round(self.fns, self.calls)


def worker(quick: bool) -> None:
    """torchao's side: reads ``setup <model> <dtype> <batch>`` / ``round`` lines, answers JSON lines."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    side = Side("torchao", quick)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "setup":
            reply: Any = side.setup(args[0], args[1], int(args[2]))
        elif cmd == "round":
            reply = side.round()
        else:
            break
        print(json.dumps(reply), flush=True)


class Remote:
    """The parent's handle on the torchao worker process."""

    def __init__(self, quick: bool) -> None:
        cmd = [sys.executable, "-m", "benchmarks.eager_quantize", "--worker"] + (["--quick"] if quick else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the torchao worker exited")
        return json.loads(line)

    def ask(self, line: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_models(quick: bool, rounds: int, with_torchao: bool, only: list[str] | None = None
                 ) -> list[dict[str, Any]]:
    ours = Side("ours", quick)
    remote = Remote(quick) if with_torchao else None
    rows = []
    try:
        for model_name, dtype, batch in GROUPS:
            if only and model_name not in only:
                continue
            mine = ours.setup(model_name, dtype, batch)
            theirs = remote.ask(f"setup {model_name} {dtype} {batch}") if remote else None
            samples: dict[str, list[float]] = {}
            for _ in range(rounds):
                for name, ms in ours.round().items():
                    samples.setdefault(f"ours {name}", []).append(ms)
                if remote:
                    for name, ms in remote.ask("round").items():
                        samples.setdefault(f"torchao {name}", []).append(ms)
            row: dict[str, Any] = {"model": model_name, "dtype": dtype, "batch": batch,
                                   "ours_sqnr_db": mine["sqnr_db"], "ours_errors": mine["errors"]}
            if theirs is not None:
                row["torchao_sqnr_db"], row["torchao_errors"] = theirs["sqnr_db"], theirs["errors"]
            row["times"] = {name: _summary(s) for name, s in samples.items()}
            rows.append(row)
            print(f"  models {model_name} {dtype} batch {batch}: done", file=sys.stderr)
    finally:
        if remote:
            remote.close()
    return rows


# --- report -------------------------------------------------------------------------------------------


def _fmt_ms(t: dict[str, float] | None) -> str:
    return "n/a" if t is None else f"{t['ms']:.3f} (±{100 * t['spread']:.0f}%)"


def report(result: dict[str, Any]) -> str:
    lines = [f"CPU: {json.dumps(result['cpu'])}"]
    if result.get("kernels"):
        lines += ["", "| batch | scheme | model dtype | kernel | op computes in | ms | vs fp32 dense |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["kernels"]:
            mark = " **(chosen)**" if r.get("chosen") else ""
            lines.append(f"| {r['batch']} | {r.get('scheme', '-')} | {r.get('dtype', '-')} | "
                         f"{r['kernel']}{mark} | {r.get('compute', '-')} | "
                         f"{r['ms']:.3f} (±{100 * r['spread']:.0f}%) | {r['speedup_vs_fp32_dense']:.2f}x |")
    if result.get("models"):
        lines += ["", "| model | dtype | batch | variant | ours ms | ours vs float | torchao ms | "
                  "torchao vs its float | torchao / ours | SQNR ours / torchao dB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["models"]:
            t = r["times"]
            for v in ("float", "int4", "int8_wo", "int8_dyn"):
                o, a = t.get(f"ours {v}"), t.get(f"torchao {v}")
                of, af = t.get("ours float"), t.get("torchao float")
                vs_o = f"{of['ms'] / o['ms']:.2f}x" if o and of else "n/a"
                vs_a = f"{af['ms'] / a['ms']:.2f}x" if a and af else (
                    "does not run" if v in r.get("torchao_errors", {}) else "n/a")
                ratio = f"{a['ms'] / o['ms']:.2f}x" if a and o else "n/a"
                so = r["ours_sqnr_db"].get(v)
                sa = r.get("torchao_sqnr_db", {}).get(v)
                sq = "-" if v == "float" else f"{so:.1f} / " + (f"{sa:.1f}" if sa is not None else "n/a")
                lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {v} | {_fmt_ms(o)} | {vs_o} | "
                             f"{_fmt_ms(a)} | {vs_a} | {ratio} | {sq} |")
            for side in ("ours_errors", "torchao_errors"):
                for v, err in r.get(side, {}).items():
                    lines.append(f"<!-- {side} {r['model']} {r['dtype']} {r['batch']} {v}: {err} -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["kernels", "models"], choices=["kernels", "models"])
    parser.add_argument("--quick", action="store_true", help="1024 / 256 sizes, 5 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-torchao", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted({g[0] for g in GROUPS}),
                        help="models part: only these models")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.quick)
        return {}
    torch.set_num_threads(1)
    rounds = args.rounds or (5 if args.quick else 15)
    result: dict[str, Any] = {"cpu": cpu_info(), "rounds": rounds}
    if "kernels" in args.part:
        result["kernels"] = bench_kernels(1024 if args.quick else 4096, [1, 32], rounds)
    if "models" in args.part:
        with_torchao = not args.no_torchao
        if with_torchao:
            try:
                import importlib.util

                with_torchao = importlib.util.find_spec("torchao") is not None
            except ImportError:
                with_torchao = False
        result["models"] = bench_models(args.quick, rounds, with_torchao, args.only)
    result["cpu"]["loadavg_after"] = [round(v, 1) for v in os.getloadavg()]
    print(report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
