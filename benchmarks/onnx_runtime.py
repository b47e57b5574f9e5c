"""onnxruntime: our int8 ONNX export vs fp32 vs onnxruntime's own ``quantize_static``.

``python -m benchmarks.onnx_runtime [--quick] [--eps 2**-12 ...] [--out results.json]``

Per model (a CNN, an MLP, a small transformer): the float model exported with
``torch.onnx.export`` (fp32), our flow (X86 recipe: prepare / calibrate / convert,
then :func:`lowering.export_onnx`), and onnxruntime's non-PT2E peer,
``onnxruntime.quantization.quantize_static`` on the fp32 file (QDQ, per-channel int8
weights, uint8 activations, MinMax, the same calibration batches; for the transformer
``OpTypesToExcludeOutputQuantization=["MatMul", "Gemm"]``). Every session runs
single-threaded (``intra_op_num_threads=1``); variants are timed interleaved: each
round runs every variant ``--iters`` times and keeps its median; figures are medians
over rounds with the interquartile range over rounds as the spread. SQNR is against
the float PyTorch model on held-out data. ``--eps`` repeats ours with other X86 weight
observer ``eps`` values (the default is 2**-12).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, c: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.body = nn.Sequential(*[m for _ in range(3) for m in (
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 100))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


class MLP(nn.Module):
    def __init__(self, d: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, 4 * d), nn.ReLU(),
                                 nn.Linear(4 * d, d))

    def forward(self, x):
        return self.net(x)


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

        a = nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))


MODELS = {"cnn_b8": (CNN, (8, 3, 32, 32)), "mlp_b8": (MLP, (8, 512)),
          "transformer_b4": (Transformer, (4, 64, 256))}
QUICK = {"mlp_b8"}


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).mean()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).mean() / noise))


def _quiet() -> Any:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _ours(model: nn.Module, calib: list[torch.Tensor], x: torch.Tensor, path: Path, eps: float | None) -> Any:
    from lowering import export_onnx
    from pt2e import convert_pt2e, prepare_pt2e
    from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    from quantizers.engine import weight_observer

    config = get_default_x86_inductor_quantization_config()
    if eps is not None:
        weight = dataclasses.replace(config.weight, observer_or_fake_quant_ctr=weight_observer(
            is_qat=False, per_channel=True, eps=eps))
        config = dataclasses.replace(config, weight=weight)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(),
                            X86InductorQuantizer().set_global(config))
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
    converted = convert_pt2e(prepared)
    lowered = export_onnx(converted, (x,), path=path)
    return lowered


def _ort_static(fp32_path: Path, calib: list[torch.Tensor], out: Path, transformer: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.it = iter([{name: b.numpy()} for b in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    import onnxruntime as ort

    name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    extra = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]} if transformer else {}
    quantize_static(str(pre), str(out), Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options=extra)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _time_interleaved(sessions: dict[str, Any], x: torch.Tensor, rounds: int, iters: int) -> dict[str, dict[str, float]]:
    feed = {k: {s.get_inputs()[0].name: x.numpy()} for k, s in sessions.items()}
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feed[k])
    for _ in range(rounds):
        for k, s in sessions.items():
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, feed[k])
                ts.append((time.perf_counter() - t0) * 1e3)
            per_round[k].append(statistics.median(ts))
    out = {}
    for k, vals in per_round.items():
        q = statistics.quantiles(vals, n=4) if len(vals) >= 2 else [vals[0]] * 3
        med = statistics.median(vals)
        out[k] = {"median_ms": med, "iqr_over_median": (q[2] - q[0]) / med}
    return out


def _machine() -> dict[str, Any]:
    import onnxruntime as ort

    from pt2e.cpu import cpu_has_vnni, cpu_model

    return {"cpu": cpu_model(), "vnni": cpu_has_vnni(), "cores": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": ort.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the MLP only, few rounds")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--eps", type=float, nargs="*", default=[], help="extra X86 weight eps to try")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = args.models or (sorted(QUICK) if args.quick else list(MODELS))
    rounds = args.rounds or (3 if args.quick else 11)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="onnx_bench_"))
    results: dict[str, Any] = {"machine": _machine(), "rounds": rounds, "iters": args.iters, "models": {}}
    print(results["machine"])
    print(f"{'model':16} {'variant':18} {'median ms':>10} {'spread':>7} {'x fp32':>7} {'SQNR dB':>8}")
    for name in names:
        cls, shape = MODELS[name]
        model = cls().eval()
        calib = [torch.randn(*shape) for _ in range(8)]
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x)
        fp32 = work / f"{name}.fp32.onnx"
        with _quiet():
            torch.onnx.export(model, (x,), str(fp32), dynamo=True, external_data=False)
            ours = {"ours int8": _ours(model, calib, x, work / f"{name}.ours.onnx", None)}
            for eps in args.eps:
                ours[f"ours eps={eps:.2g}"] = _ours(model, calib, x, work / f"{name}.ours{eps}.onnx", eps)
            _ort_static(fp32, calib, work / f"{name}.ort.onnx", transformer=name.startswith("transformer"))
        paths = {"fp32": fp32, **{k: v.path for k, v in ours.items()},
                 "ORT quantize_static": work / f"{name}.ort.onnx"}
        sessions = {k: _session(p) for k, p in paths.items()}
        timing = _time_interleaved(sessions, x, rounds, args.iters)
        row: dict[str, Any] = {}
        for k, s in sessions.items():
            row[k] = {**timing[k], "speedup_vs_fp32": timing["fp32"]["median_ms"] / timing[k]["median_ms"],
                      "sqnr_vs_float_db": _sqnr(ref, _run(s, x)), "bytes": paths[k].stat().st_size}
            print(f"{name:16} {k:18} {row[k]['median_ms']:10.3f} {row[k]['iqr_over_median']:7.1%} "
                  f"{row[k]['speedup_vs_fp32']:6.2f}x {row[k]['sqnr_vs_float_db']:8.1f}")
        results["models"][name] = row
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
