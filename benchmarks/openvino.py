"""OpenVINO int8 vs OpenVINO fp32 vs our X86 Inductor int8, and ours vs the reference quantizer.

``python -m benchmarks.openvino [--quick] [--rounds N] [--out results.json]``

Single-threaded (torch and OpenVINO), every variant of a model timed in turn within
each round (interleaved), medians over rounds with the interquartile range / median
as spread, SQNR against the float model per row. The reference
(``executorch.backends.openvino.quantizer.OpenVINOQuantizer``, NNCF) quantizes in a
subprocess (it imports torchao, which patches Inductor) and hands back its converted
graph as a saved ``ExportedProgram``; it is then lowered with the same
:func:`lowering.to_openvino` and timed in the same rounds. A reference mode that
crashes is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]


class CNN(nn.Module):
    def __init__(self, w: int = 64) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(w * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c3(torch.relu(self.c2(y))) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


class MLP(nn.Module):
    def __init__(self, d: int = 512) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, 4 * d), nn.Linear(4 * d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Transformer(nn.Module):
    def __init__(self, d: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.ln1(x)

        def split(t):
            return t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2)

        att = torch.softmax(torch.matmul(split(self.q(h)), split(self.k(h)).transpose(-1, -2)) * (d // self.heads) ** -0.5, -1)
        a = torch.matmul(att, split(self.v(h)))
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


def models(quick: bool) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], str]]:
    """name -> (model, example inputs, the reference mode to compare with)."""
    torch.manual_seed(0)
    s = 2 if quick else 1
    return {
        "cnn": (CNN(64 // s).eval(), (torch.randn(8 // s, 3, 16, 16),), "INT8_MIXED"),
        "mlp": (MLP(512 // s).eval(), (torch.randn(32 // s, 512 // s),), "INT8_MIXED"),
        "transformer": (Transformer(256 // s).eval(), (torch.randn(4 // s, 64, 256 // s),), "INT8_TRANSFORMER"),
    }


_REFERENCE = r"""
import json, sys, torch
sys.path[:0] = [sys.argv[1]]
from benchmarks.openvino import models
from executorch.backends.openvino.quantizer import OpenVINOQuantizer, QuantizationMode
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
out = {}
for name, (model, args, default_mode) in models(sys.argv[3] == "1").items():
    for mode in sorted({default_mode, "INT8_SYM", "INT8_MIXED"}):
        try:
            p = prepare_pt2e(torch.export.export(model, args).module(), OpenVINOQuantizer(mode=QuantizationMode[mode]))
            p(*args)
            c = convert_pt2e(p, fold_quantize=False)
            path = f"{sys.argv[2]}/{name}_{mode}.pt2"
            torch.export.save(torch.export.export(c, args), path)
            out[f"{name}/{mode}"] = path
        except Exception as e:
            out[f"{name}/{mode}"] = "error: " + type(e).__name__ + ": " + str(e)[:120]
print(json.dumps(out))
"""


def reference_graphs(tmp: str, quick: bool) -> dict[str, str]:
    run = subprocess.run([sys.executable, "-c", _REFERENCE, str(ROOT), tmp, "1" if quick else "0"],
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        return {"error": run.stderr[-500:]}
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).mean()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).mean() / noise))


def timed(fn: Callable[[], Any], reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def bench_model(name: str, model: nn.Module, args: tuple[torch.Tensor, ...], ref_mode: str,
                ref_paths: dict[str, str], rounds: int, reps: int) -> list[dict[str, Any]]:
    from lowering import check_openvino_int8, compile_x86, to_openvino
    from pt2e import convert_pt2e, prepare_pt2e
    from quantizers import (
        OpenVINOQuantizer,
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
        x86_needs_reduce_range,
    )

    ours_mode = ref_mode.lower()
    expected = model(*args)
    variants: dict[str, tuple[Callable[..., Any], str]] = {}
    variants["openvino fp32"] = (to_openvino(torch.export.export(model, args).module(), args, num_threads=1), "")
    prepared = prepare_pt2e(torch.export.export(model, args).module(), OpenVINOQuantizer(mode=ours_mode))
    prepared(*args)
    converted = convert_pt2e(prepared, fold_quantize=False)
    ov = to_openvino(converted, args, num_threads=1)
    variants[f"openvino int8 (ours, {ours_mode})"] = (ov, "; ".join(check_openvino_int8(converted, ov)))
    # half-range weights everywhere: what a CPU without VNNI needs (docs/openvino.md)
    fixed = prepare_pt2e(torch.export.export(model, args).module(),
                         OpenVINOQuantizer(mode=ours_mode, overflow_fix="enable"))
    fixed(*args)
    fixed_converted = convert_pt2e(fixed, fold_quantize=False)
    fixed_ov = to_openvino(fixed_converted, args, num_threads=1)
    variants[f"openvino int8 (ours, {ours_mode}, overflow_fix=enable)"] = (
        fixed_ov, "; ".join(check_openvino_int8(fixed_converted, fixed_ov)))
    x86q = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(reduce_range=x86_needs_reduce_range()))
    xp = prepare_pt2e(torch.export.export(model, args).module(), x86q)
    xp(*args)
    variants["x86 inductor int8 (ours)"] = (compile_x86(convert_pt2e(xp), args), "")
    for key, path in sorted(ref_paths.items()):
        if not key.startswith(name + "/"):
            continue
        mode = key.split("/")[1]
        if path.startswith("error"):
            variants[f"openvino int8 (reference, {mode})"] = (None, path)  # type: ignore[assignment]
            continue
        rgm = torch.export.load(path).module()
        try:
            rov = to_openvino(rgm, args, num_threads=1)
            variants[f"openvino int8 (reference, {mode})"] = (rov, "; ".join(check_openvino_int8(rgm, rov))[:100])
        except Exception as e:  # a reference graph OpenVINO cannot compile is a result too
            variants[f"openvino int8 (reference, {mode})"] = (None, f"error: {type(e).__name__}")  # type: ignore[assignment]
    times: dict[str, list[float]] = {k: [] for k, (fn, _) in variants.items() if fn is not None}
    sq: dict[str, float] = {}
    with torch.no_grad():
        for k, (fn, _) in variants.items():
            if fn is not None:
                try:
                    sq[k] = sqnr(expected, fn(*args))
                except Exception as e:
                    variants[k] = (None, f"error at inference: {type(e).__name__}: {str(e)[:80]}")  # type: ignore[assignment]
                    times.pop(k, None)
        for _ in range(rounds):
            for k in times:
                times[k].append(timed(lambda k=k: variants[k][0](*args), reps))
    rows = []
    for k, (_, note) in variants.items():
        t = times.get(k)
        if t:
            q = statistics.quantiles(t, n=4) if len(t) >= 4 else [min(t), 0, max(t)]
            med = statistics.median(t)
            rows.append({"model": name, "variant": k, "ms": med, "spread": (q[2] - q[0]) / med,
                         "sqnr_db": sq.get(k), "note": note})
        else:
            rows.append({"model": name, "variant": k, "ms": None, "spread": None, "sqnr_db": None, "note": note})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="half-size models, few rounds")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pt2e.cpu import cpu_has_vnni

    rounds = 5 if opts.quick else opts.rounds
    with tempfile.TemporaryDirectory() as tmp:
        ref = reference_graphs(tmp, opts.quick)
        rows = []
        for name, (model, args, ref_mode) in models(opts.quick).items():
            rows += bench_model(name, model, args, ref_mode, ref, rounds, reps=20)
    print(f"CPU VNNI: {cpu_has_vnni()}; 1 thread; {rounds} interleaved rounds")
    print(f"{'model':12} {'variant':56} {'ms':>8} {'spread':>7} {'SQNR dB':>8}  note")
    for r in rows:
        ms = f"{r['ms']:.3f}" if r["ms"] is not None else "-"
        sp = f"{r['spread']:.0%}" if r["spread"] is not None else "-"
        sq = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else "-"
        print(f"{r['model']:12} {r['variant']:56} {ms:>8} {sp:>7} {sq:>8}  {r['note']}")
    if opts.out:
        pathlib.Path(opts.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
