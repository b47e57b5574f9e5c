"""The ``pt2e`` command: quantize a saved program for a backend without writing code.

Built on the backend registry (:mod:`lowering.backends`): every registered backend
is a ``--backend`` choice (a unique prefix works: ``x86`` is ``x86_inductor``).

* ``pt2e quantize MODEL.pt2 --backend x86 --calib DATA --out OUT [--report REPORT.md]``:
  load a ``torch.export.save`` d program, calibrate on DATA (progress bar), convert,
  lower, check that the int8 kernels ran, write the backend's artefact and print a
  report (int8 vs float ops, SQNR on a held-back batch, sizes). ``--recipe FAMILY``
  quantizes with :func:`pt2e.quantize_with_recipe` instead (SmoothQuant, equalization,
  GPTQ, bias correction: each kept only where it scores better), choosing on
  ``--recipe-data DATA`` when given, else on the calibration batches.
* ``pt2e inspect MODEL.pt2 [--backend B]``: what the quantizer would observe and
  which compute ops would stay float, without calibrating.
* ``pt2e compare FLOAT.pt2 QUANTIZED.pt2 --data DATA [--out TABLE]``: the numeric
  debugger's per-layer table (worst layer first) of a program ``pt2e quantize`` wrote
  for x86 (the converted graph) against the float program; ``--out`` saves it as
  ``.md``, ``.csv``, ``.json`` or a ``.png`` plot.
* ``pt2e backends``: the registered backends.

Calibration data (``--calib``): a ``.pt`` file holding a tensor (one batch), a tuple
of tensors (one batch of several inputs) or a list of batches; a folder of such
files (sorted by name); or an ``.npz`` whose arrays are one batch's inputs in order.
Each batch must match the exported program's inputs. With two or more batches the
last one is held back to measure SQNR.

Exit status: 0 on success, 2 on a user error (one line, no traceback unless
``--verbose``), 1 if the backend ran an int8 op in float (``--no-check`` skips that).

>>> main(["backends"])  # doctest: +ELLIPSIS
x86_inductor ...
0
>>> main(["quantize", "missing.pt2", "--backend", "x86", "--calib", "c.pt", "--out", "o"])  # on stderr:
2
>>> # pt2e: error: MODEL 'missing.pt2' does not exist; pass the file written by torch.export.save(...)
"""

from __future__ import annotations

import argparse
import ast
import copy
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pt2e.errors import Pt2eError

from .backends import Backend, get_backend, list_backends

__all__ = ["main", "load_batches", "resolve_backend"]

Batch = tuple[torch.Tensor, ...]


class CliUsageError(Pt2eError, ValueError):
    """A command-line argument names something missing or malformed."""


def resolve_backend(name: str) -> Backend:
    """The backend registered as ``name``, or the only one whose name starts with it.

    >>> resolve_backend("x86").name, resolve_backend("xnnpack").name
    ('x86_inductor', 'xnnpack')
    """
    names = [b.name for b in list_backends()]
    if name in names:
        return get_backend(name)
    matches = [n for n in names if n.startswith(name)]
    if len(matches) == 1:
        return get_backend(matches[0])
    raise CliUsageError(
        f"--backend {name!r} is {'ambiguous' if matches else 'unknown'}; registered backends: "
        f"{', '.join(names)}"
    )


def _as_batch(obj: Any, where: str) -> Batch:
    if isinstance(obj, torch.Tensor):
        return (obj,)
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tuple(obj)
    raise CliUsageError(
        f"{where}: a batch must be a tensor or a tuple of tensors, got {type(obj).__name__}"
    )


def _load_file(path: Path) -> list[Batch]:
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as arrays:
            return [tuple(torch.from_numpy(arrays[k]) for k in arrays.files)]
    if path.suffix not in (".pt", ".pth"):
        raise CliUsageError(f"--calib {str(path)!r}: expected a .pt/.pth or .npz file, or a folder of them")
    obj = torch.load(path, weights_only=True)
    if isinstance(obj, list):
        return [_as_batch(b, f"{path}[{i}]") for i, b in enumerate(obj)]
    return [_as_batch(obj, str(path))]


def load_batches(path: str | Path, limit: int | None = None) -> list[Batch]:
    """Calibration batches from a ``.pt`` / ``.npz`` file or a folder of them (see the module doc).

    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> torch.save([torch.randn(2, 4), torch.randn(2, 4)], f"{d}/calib.pt")
    >>> [tuple(b[0].shape) for b in load_batches(f"{d}/calib.pt")]
    [(2, 4), (2, 4)]
    """
    p = Path(path)
    if not p.exists():
        raise CliUsageError(f"--calib {str(p)!r} does not exist")
    files = sorted(f for f in p.iterdir() if f.suffix in (".pt", ".pth", ".npz")) if p.is_dir() else [p]
    if not files:
        raise CliUsageError(f"--calib {str(p)!r}: the folder holds no .pt/.pth/.npz files")
    batches = [b for f in files for b in _load_file(f)]
    if not batches:
        raise CliUsageError(f"--calib {str(p)!r} holds no batches")
    return batches[:limit] if limit else batches


def _load_program(path: str) -> torch.export.ExportedProgram:
    p = Path(path)
    if not p.exists():
        raise CliUsageError(
            f"MODEL {path!r} does not exist; pass the file written by torch.export.save(program, path)"
        )
    try:
        return torch.export.load(p)
    except Exception as e:  # torch.export.load raises several types for a file it cannot read
        raise CliUsageError(
            f"MODEL {path!r} is not a torch.export program ({type(e).__name__}: {e}); save one with "
            "torch.export.save(torch.export.export(model, example_inputs), path)"
        ) from e


def _config_kwargs(backend: Backend, config: str, options: Sequence[str]) -> dict[str, Any]:
    kwargs = backend.recommended_config_kwargs()
    if config == "dynamic":
        kwargs["is_dynamic"] = True
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or not key.isidentifier():
            raise CliUsageError(f"--option {option!r}: write it as NAME=VALUE (e.g. is_per_channel=True)")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _first_tensor(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise CliUsageError(f"the model's first output is a {type(out).__name__}, not a tensor")
    return out


def _run(model: Any, batch: Batch, where: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            return _first_tensor(model(*batch))
    except Pt2eError:
        raise
    except Exception as e:
        shapes = [tuple(t.shape) for t in batch]
        raise CliUsageError(
            f"{where} failed on a calibration batch of shapes {shapes} ({type(e).__name__}: {e}); "
            "batches must match the exported program's inputs (export a dynamic dimension to vary it)"
        ) from e


def _write_artefact(lowered: Any, converted: torch.fx.GraphModule, example: Batch, out: Path) -> Path:
    """The backend's own artefact where it has one (``.pte``, IR, ``.onnx``), else the converted program."""
    out.parent.mkdir(parents=True, exist_ok=True)
    save = getattr(lowered, "save", None)
    if callable(save):
        written = save(out)
        return Path(written) if written is not None else out
    torch.export.save(torch.export.export(converted, example), out)
    return out


def _float_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """The program's module with numeric debug handles, numbered the same way on every load,
    so a converted program written by ``quantize`` can be compared with the float file."""
    from pt2e import generate_numeric_debug_handle

    model = program.module()
    generate_numeric_debug_handle(model)
    return model


def _quantize_with_recipe(args: argparse.Namespace, backend: Backend, model: torch.fx.GraphModule,
                          quantizer: Any, calib: list[Batch]) -> tuple[torch.fx.GraphModule, list[str]]:
    """The recipe's converted model and the report lines about it."""
    from pt2e import quantize_with_recipe

    if args.config != "static":
        raise CliUsageError(
            f"--recipe needs --config static (got {args.config!r}): the recipe chooses between "
            "calibrated static models; drop --recipe for dynamic quantization")
    # folded or not, the weights are the same numbers (OpenVINO's lowering re-expands them)
    other = {k: v for k, v in backend.default_convert_kwargs.items() if k != "fold_quantize"}
    if other:
        raise CliUsageError(
            f"--recipe converts with convert_pt2e's defaults, and backend {backend.name!r} converts "
            f"with {other}; drop --recipe for this backend")
    choose_on = load_batches(args.recipe_data) if args.recipe_data else None
    result = quantize_with_recipe(model, quantizer, calib, family=args.recipe, eval_data=choose_on,
                                  progress=not args.quiet)
    where = (f"{len(choose_on)} batch(es) from {args.recipe_data}" if choose_on is not None else
             "the calibration batches (pass --recipe-data with held-out batches to also try range margins)")
    return result.model, ["## Recipe", f"Steps chosen on {where}.", "```", str(result.report), "```", ""]


def _quantize(args: argparse.Namespace) -> int:
    from pt2e import calibrate, prepare_pt2e, quantization_report
    from pt2e.numeric_debugger import sqnr

    backend = resolve_backend(args.backend)
    program = _load_program(args.model)
    batches = load_batches(args.calib, args.batches)
    held_back = batches[-1]
    calib = batches[:-1] if len(batches) > 1 else batches
    model = _float_module(program)
    float_out = _run(model, held_back, "the float model")

    quantizer = backend.quantizer(**_config_kwargs(backend, args.config, args.option))
    recipe_lines: list[str] = []
    if args.recipe:
        converted, recipe_lines = _quantize_with_recipe(args, backend, model, quantizer, calib)
    else:
        prepared = prepare_pt2e(copy.deepcopy(model), quantizer)
        calibrate(prepared, calib, progress=not args.quiet)
        converted = backend.convert(prepared)
    converted_out = _run(converted, held_back, "the converted model")
    lowered = backend.lower(converted, held_back)
    lowered_out = _run(lowered, held_back, f"the {backend.name} artefact")
    problems = [] if args.no_check else backend.check(converted, lowered)
    out = _write_artefact(lowered, converted, held_back, Path(args.out))

    graph_report = quantization_report(converted)
    lines = [
        f"# pt2e quantize: {Path(args.model).name} for {backend.name}",
        "",
        f"- backend: {backend.name} ({backend.description})",
        f"- quantizer: {type(quantizer).__name__}, config: {args.config}",
        f"- calibration: {len(calib)} batch(es) from {args.calib}"
        + (", SQNR on the held-back last batch" if len(batches) > 1 else
           ", SQNR on that same batch (pass two or more batches to hold one back)"),
        f"- SQNR vs float: converted graph {float(sqnr(float_out, converted_out)):.1f} dB, "
        f"{backend.name} artefact {float(sqnr(float_out, lowered_out)):.1f} dB",
        f"- sizes: model {Path(args.model).stat().st_size / 1e6:.2f} MB, "
        f"artefact {out.stat().st_size / 1e6:.2f} MB ({out})",
        "",
        *recipe_lines,
        "## Converted graph",
        "```",
        str(graph_report),
        "```",
        "",
        "## What the backend ran",
        "```",
        str(lowered.report),
        "```",
    ]
    if problems:
        lines += ["", "## Int8 ops the backend ran in float", *[f"- {p}" for p in problems]]
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
        print(f"\nreport written to {args.report}")
    return 1 if problems else 0


def _inspect(args: argparse.Namespace) -> int:
    from pt2e import prepare_pt2e
    from pt2e.graph import describe_node
    from pt2e.prepare import observer_nodes

    backend = resolve_backend(args.backend)
    model = _load_program(args.model).module()
    quantizer = backend.quantizer(**_config_kwargs(backend, args.config, args.option))
    prepared = prepare_pt2e(model, quantizer)
    observers = observer_nodes(prepared)
    print(f"backend: {backend.name} ({type(quantizer).__name__}, config: {args.config})")
    print(f"{len(observers)} observed value(s), each a quantize/dequantize pair after convert:")
    for obs in observers:
        src = obs.args[0]
        users = ", ".join(sorted(u.name for u in obs.users))
        print(f"  {describe_node(src) if isinstance(src, torch.fx.Node) else src} -> {users}")
    report = getattr(quantizer, "report", None)
    if callable(report):
        print(report())
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pt2e import compare

    float_model = _float_module(_load_program(args.float_model))
    quantized = _load_program(args.quantized_model).module()
    batches = load_batches(args.data, args.batches)
    report = compare(float_model, quantized, batches)
    print(report)
    if args.out:
        written = report.save(args.out)
        print(f"\ntable written to {written if written is not None else args.out}")
    return 0


def _backends(args: argparse.Namespace) -> int:
    for b in list_backends():
        print(f"{b.name:14s} {b.description}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pt2e", description="Quantize torch.export programs for real int8 backends.",
        epilog="example: pt2e quantize model.pt2 --backend x86 --calib calib.pt --out model_int8.pt2",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, backend_required: bool) -> None:
        p.add_argument("model", metavar="MODEL", help="a program saved with torch.export.save")
        p.add_argument("--backend", required=backend_required, default="x86_inductor",
                       help="registered backend name or unique prefix (see `pt2e backends`)")
        p.add_argument("--config", choices=("static", "dynamic"), default="static",
                       help="static (calibrated) or dynamic (runtime) activation quantization")
        p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                       help="extra keyword for the backend's config builder, e.g. is_per_channel=True")
        p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")

    q = sub.add_parser(
        "quantize", help="calibrate, convert, lower and write the backend's artefact",
        epilog="example: pt2e quantize model.pt2 --backend xnnpack --option is_per_channel=True "
               "--calib calib.pt --out model.pte --report report.md",
    )
    common(q, backend_required=True)
    q.add_argument("--calib", required=True, metavar="DATA", help=".pt/.npz file or a folder of them")
    q.add_argument("--batches", type=int, default=None, metavar="N", help="use at most N batches")
    q.add_argument("--out", required=True, metavar="OUT", help="where to write the artefact")
    q.add_argument("--report", metavar="REPORT.md", help="also write the report here (Markdown)")
    q.add_argument("--no-check", action="store_true", help="do not fail when an int8 op ran in float")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--recipe", choices=("auto", "transformer", "convnet"), default=None, metavar="FAMILY",
                   help="quantize with the post-training recipe of FAMILY (auto, transformer, convnet): "
                        "SmoothQuant, equalization, GPTQ, bias correction, each kept only if it helps")
    q.add_argument("--recipe-data", metavar="DATA",
                   help="held-out batches the recipe chooses its steps on (default: the calibration "
                        "batches); keep them apart from the data you judge the result on")
    q.set_defaults(func=_quantize)

    i = sub.add_parser(
        "inspect", help="what the quantizer would observe and leave float (no calibration)",
        epilog="example: pt2e inspect model.pt2 --backend xnnpack",
    )
    common(i, backend_required=False)
    i.set_defaults(func=_inspect)

    c = sub.add_parser(
        "compare", help="per-layer accuracy of a quantized program against the float one",
        epilog="example: pt2e compare model.pt2 model_int8.pt2 --data calib.pt --out layers.md",
    )
    c.add_argument("float_model", metavar="FLOAT", help="the float program (torch.export.save)")
    c.add_argument("quantized_model", metavar="QUANTIZED",
                   help="the converted program `pt2e quantize --backend x86` wrote")
    c.add_argument("--data", required=True, metavar="DATA", help=".pt/.npz file or a folder of them")
    c.add_argument("--batches", type=int, default=None, metavar="N", help="use at most N batches")
    c.add_argument("--out", metavar="TABLE", help="save the table (.md, .csv, .json, .png)")
    c.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    c.set_defaults(func=_compare)

    b = sub.add_parser("backends", help="list the registered backends", epilog="example: pt2e backends")
    b.set_defaults(func=_backends)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pt2e`` command; returns the exit status (see the module doc)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # torch 2.13 warns about its own LeafSpec whenever an exported module is deep-copied
            # (copyreg rebuilds the deprecated class); it says nothing to a command-line user
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            status: int = args.func(args)
        return status
    except (Pt2eError, OSError) as e:
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(e).split())
        print(f"pt2e: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

