"""Ours vs torchao's X86InductorQuantizer: int8/fp32 latency, SQNR, prepare+convert time.

``python -m benchmarks.x86_inductor [--quick] [--out results.json]``

Each framework runs in its own worker process (importing torchao's X86 quantizer
patches Inductor's passes, so the two must never share a process). Inside a
worker, the variants of a model alternate within every timing round
(interleaved), at 1 and 2 threads; the figures are medians over rounds, and the
spread (interquartile range / median) says how noisy each is. Variants:

* ``fp32``: the float model, ``torch.compile`` d with freezing (the baseline);
* ``int8``: the converted graph, ``torch.compile`` d with freezing (no wrapper);
* ``int8 compile_x86`` (ours): through :func:`lowering.compile_x86`, which now
  clones the caller's input only when the generated code writes into it;
* ``int8-mixed-bf16`` (CPUs with native bf16 only): the converted graph compiled and
  run under ``torch.autocast("cpu", torch.bfloat16)``: torchao's documented recipe,
  ours through ``compile_x86(..., mixed_bf16=True)``.

Both frameworks use the same recipe: default x86 config, ``reduce_range`` chosen
for this CPU (``quantizers.x86_needs_reduce_range()``), Inductor with freezing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# --- models --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()  # one instance used twice, as in torchvision
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class TwoLinears(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.b(self.a(x))


def cases(quick: bool) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """(name, model factory, input shape) for every benchmarked configuration."""
    hw, d_mlp, d_tr, seq, d_toy = (64, 256, 128, 32, 256) if quick else (224, 1024, 512, 128, 1024)

    def mlp():
        return nn.Sequential(nn.Linear(d_mlp, 4 * d_mlp), nn.ReLU(), nn.Linear(4 * d_mlp, d_mlp))

    def encoder():
        return nn.TransformerEncoderLayer(d_tr, 8, 4 * d_tr, dropout=0.0, batch_first=True)

    return [
        ("resnet18 b1", ResNet18, (1, 3, hw, hw)),
        ("resnet18 b16", ResNet18, (4 if quick else 16, 3, hw, hw)),
        ("mlp b1", mlp, (1, d_mlp)),
        ("mlp b64", mlp, (64, d_mlp)),
        (f"transformer layer d{d_tr} s{seq}", encoder, (1, seq, d_tr)),
        ("2 linears no bias b1", lambda: TwoLinears(d_toy), (1, d_toy)),
    ]


# --- worker --------------------------------------------------------------------------------------


def _framework(name: str) -> dict[str, Any]:
    # the config keywords this CPU needs (reduce_range without VNNI), for both frameworks;
    # importing lowering imports neither a quantizer nor torchao
    from lowering import get_backend

    backend = get_backend("x86_inductor")
    config_kwargs = backend.recommended_config_kwargs()
    if name == "torchao":
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xq

        quantizer = xq.X86InductorQuantizer().set_global(
            xq.get_default_x86_inductor_quantization_config(**config_kwargs))
    else:
        from pt2e import convert_pt2e, prepare_pt2e

        quantizer = backend.quantizer(**config_kwargs)
    return {"prepare": prepare_pt2e, "convert": convert_pt2e, "quantizer": quantizer}


def _compile(model: nn.Module, x: torch.Tensor, bf16: bool = False) -> Callable[[torch.Tensor], Any]:
    # the same wrapper-free compile for both frameworks; bf16: int8-mixed-bf16 as torchao
    # documents it (autocast around the compiled call)
    compiled = torch.compile(model)

    def run(inp: torch.Tensor) -> Any:
        with (torch._inductor.config.patch(freezing=True), torch.no_grad(),
              torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)):
            return compiled(inp)

    run(x)
    return run


def _variants(framework: str, model: nn.Module, converted: nn.Module, x: torch.Tensor) -> dict[str, Callable]:
    from pt2e.cpu import cpu_has_bf16

    def fresh() -> nn.Module:
        # each variant compiles its own copy: variants sharing one GraphModule share (and
        # recompile) one forward code object, and then time each other's compiled code
        return copy.deepcopy(converted)

    fns = {"fp32": _compile(model, x), "int8": _compile(fresh(), x)}
    if framework == "ours":
        from lowering import compile_x86

        fns["int8 compile_x86"] = compile_x86(fresh(), (x,))
    if cpu_has_bf16():
        fns["int8-mixed-bf16"] = (compile_x86(fresh(), (x,), mixed_bf16=True) if framework == "ours"
                                  else _compile(fresh(), x, bf16=True))
    return fns


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).mean()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).mean() / noise))


def _time(fns: dict[str, Callable], x: torch.Tensor, rounds: int) -> dict[str, dict[str, float]]:
    iters = {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn(x)
        iters[k] = max(1, int(0.15 / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters[k]):
                fn(x)
            samples[k].append((time.perf_counter() - t0) * 1e3 / iters[k])
    out = {}
    for k, v in samples.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
        out[k] = {"ms": statistics.median(v), "spread": (q[2] - q[0]) / statistics.median(v)}
    return out


def worker(framework: str, quick: bool, rounds: int, only: str | None) -> None:
    warnings.filterwarnings("ignore")
    fw = _framework(framework)
    for name, make, shape in cases(quick):
        if only and not any(o in name for o in only.split(",")):
            continue
        torch.manual_seed(0)
        model = make().eval()
        x = torch.randn(*shape)
        calib = [torch.randn(*shape) for _ in range(4)]
        row: dict[str, Any] = {"framework": framework, "case": name}
        try:
            note = ""
            try:
                graph = torch.export.export(model, (x,)).module()
                t0 = time.perf_counter()
                prepared = fw["prepare"](graph, fw["quantizer"])
            except Exception as e:  # torchao: shared module instances need strict export
                note = f"non-strict export failed ({type(e).__name__}: {str(e)[:60]}); used strict=True"
                graph = torch.export.export(model, (x,), strict=True).module()
                t0 = time.perf_counter()
                prepared = fw["prepare"](graph, fw["quantizer"])
            t_prep = time.perf_counter() - t0
            with torch.no_grad():
                for c in calib:
                    prepared(c)
            t0 = time.perf_counter()
            converted = fw["convert"](prepared)
            row["prepare_convert_s"] = t_prep + time.perf_counter() - t0
            row["note"] = note
            fns = _variants(framework, model, converted, x)
            with torch.no_grad():
                ref = model(x)
                row["sqnr_db"] = {k: _sqnr(ref, fn(x).float()) for k, fn in fns.items() if k != "fp32"}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                row[f"t{threads}"] = _time(fns, x, rounds)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print("ROW " + json.dumps(row), flush=True)


# --- driver --------------------------------------------------------------------------------------


def _fmt(rows: list[dict[str, Any]]) -> str:
    by = {(r["framework"], r["case"]): r for r in rows}
    names = list(dict.fromkeys(r["case"] for r in rows))
    lines = [
        "| case | variant | threads | fp32 compiled ms (ours) | int8 ms (ours) | speedup ours "
        "| speedup torchao | spread ours / torchao | SQNR dB ours / torchao "
        "| prepare+convert s ours / torchao |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for case in names:
        o, a = by.get(("ours", case), {}), by.get(("torchao", case), {})
        variants = [k for k in (o.get("t1") or a.get("t1") or {}) if k != "fp32"]
        for variant in variants:
            for th in (1, 2):
                def sp(r: dict[str, Any], th: int = th, v: str = variant) -> str:
                    t = r.get(f"t{th}")
                    if not t or v not in t:
                        return r.get("error", "n/a")[:40] if not t else "-"
                    return f"{t['fp32']['ms'] / t[v]['ms']:.2f}x"

                def spread(r: dict[str, Any], th: int = th, v: str = variant) -> str:
                    t = r.get(f"t{th}")
                    return f"{100 * max(t['fp32']['spread'], t[v]['spread']):.0f}%" if t and v in t else "-"

                def sq(r: dict[str, Any], v: str = variant) -> str:
                    got = r.get("sqnr_db", {})
                    return f"{got[v]:.1f}" if v in got else "-"

                to = o.get(f"t{th}")
                ms = f"{to['fp32']['ms']:.2f} | {to[variant]['ms']:.2f}" if to and variant in to else "- | -"
                lines.append(
                    f"| {case} | {variant} | {th} | {ms} | {sp(o)} | {sp(a)} | {spread(o)} / {spread(a)} | "
                    f"{sq(o)} / {sq(a)} | "
                    f"{o.get('prepare_convert_s', nan):.2f} / {a.get('prepare_convert_s', nan):.2f} |"
                )
    notes = [f"- torchao, {r['case']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--only", default=None, help="run the cases whose name contains this (comma: any of)")
    p.add_argument("--frameworks", default="ours,torchao")
    p.add_argument("--out", default=None, help="write the raw rows as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    if args.worker:
        worker(args.worker, args.quick, rounds, args.only)
        return
    rows = []
    for fw in args.frameworks.split(","):
        cmd = [sys.executable, "-m", "benchmarks.x86_inductor", "--worker", fw, "--rounds", str(rounds)]
        cmd += ["--quick"] * args.quick + (["--only", args.only] if args.only else [])
        print(f"running {fw} worker...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode != 0 and not got:
            print(proc.stderr[-2000:])
        rows += got
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    from pt2e.cpu import cpu_has_bf16, cpu_has_vnni, cpu_model

    print(f"CPU: {cpu_model()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"VNNI {cpu_has_vnni()}, bf16 {cpu_has_bf16()}, torch {torch.__version__}")
    print(_fmt(rows))


if __name__ == "__main__":
    main()
