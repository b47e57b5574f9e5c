"""Run calibration data through a prepared model, with a progress bar.

A batch is checked against the exported signature before it runs, so a batch with
the wrong number of inputs, another dtype or another size than the export example
gets a project error naming the batch, the input and the fix instead of a pytree
or guard failure deep inside torch.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.fx import GraphModule

from .capture import check_input_values, expected_inputs
from .distributed import sync_observers
from .errors import ArgumentValueError
from .graph import describe_node
from .prepare import observer_nodes
from .progress import iterate

__all__ = ["calibrate", "check_batch", "calibration_problems", "warn_calibration_problems"]


def calibrate(
    model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    progress: bool = True,
    desc: str = "calibrating",
    sync: bool = True,
    group: Any = None,
) -> int:
    """Feed every batch to ``model`` under ``torch.no_grad()``; return the batch count.

    A batch is a tensor, a tuple/list of positional arguments, or a dict of keyword
    arguments (``{"input_ids": ..., "attention_mask": ...}``). With ``progress`` a
    tqdm bar is shown when tqdm is installed (it is optional) and standard error is a
    terminal (a bar redrawn into a log file floods it).

    ``batches`` may be a ``torch.utils.data.DataLoader``; to calibrate on several
    processes give it a ``DistributedSampler``. When a ``torch.distributed`` process
    group is initialised and ``sync`` is True, the observers are merged across the
    ranks of ``group`` (default: the world) after the last batch
    (:func:`pt2e.distributed.sync_observers`, a collective every rank must reach),
    so every rank converts to the same model; see ``docs/distributed.md``.

    >>> import torch
    >>> calibrate(torch.nn.Linear(3, 2), [torch.randn(4, 3) for _ in range(5)], progress=False)
    5
    """
    iterator = iterate(batches, desc=desc, unit="batch", enabled=progress)
    count = 0
    with torch.no_grad():
        for batch in iterator:
            if isinstance(batch, Mapping):
                args, kwargs = (), dict(batch)
            else:
                args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
                kwargs = {}
            if isinstance(model, GraphModule):
                args, kwargs = check_batch(model, args, kwargs, f"calibrate: batch {count}")
            model(*args, **kwargs)
            count += 1
    if sync:  # a no-op unless a torch.distributed process group is initialised
        sync_observers(model, group=group)
    return count


def check_batch(
    model: GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Check that ``model`` (exported) can take ``(args, kwargs)``; return them as it was exported.

    ``torch.export`` fixes which inputs are positional and which are keywords; a batch
    may name positional inputs (a dict batch) or pass keyword ones by position, and
    is rearranged to the exported layout. Raises a clear error for a wrong number of
    inputs, and for a dtype or static size other than the export example's.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(4, 3),)).module()
    >>> args, kwargs = check_batch(gm, (), {"input": torch.randn(4, 3)}, "calibrate: batch 0")
    >>> len(args), kwargs
    (1, {})
    >>> check_batch(gm, (torch.randn(4, 3), torch.randn(4, 3)), {}, "calibrate: batch 0")
    ...     # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    pt2e.errors.ArgumentValueError: calibrate: batch 0 has 2 positional input(s) and keywords
    [], but the model was exported for (input); ...
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return args, kwargs  # no signature to check against
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        names = ", ".join(signature.parameters)
        raise ArgumentValueError(
            f"{where} has {len(args)} positional input(s) and keywords {sorted(kwargs)}, but "
            f"the model was exported for ({names}); pass each batch as a tuple of "
            f"{len(signature.parameters)} input(s) in that order, or as a dict keyed by those "
            f"names ({e})"
        ) from None
    values = bound.arguments
    spec: Any = getattr(model, "_in_spec", None)
    if spec is not None and getattr(spec, "num_children", None) == 2:
        n_positional = spec.child(0).num_children
        keywords = list(spec.child(1).context or [])
        params = list(signature.parameters)
        args = tuple(values[n] for n in params[:n_positional] if n in values)
        kwargs = {k: values[k] for k in keywords if k in values}
    else:
        args, kwargs = tuple(bound.args), dict(bound.kwargs)
    flat = list(values.values())
    n_placeholders = sum(n.op == "placeholder" for n in model.graph.nodes)
    # plain tensor arguments are the graph's placeholders one to one
    if len(flat) == n_placeholders and all(isinstance(v, torch.Tensor) for v in flat):
        check_input_values(expected_inputs(model), tuple(flat), where)
    return args, kwargs


def _observed(node: torch.fx.Node) -> str:
    src = node.args[0] if node.args else None
    what = describe_node(src) if isinstance(src, torch.fx.Node) else "its input"
    return f"'{node.target}' (observing {what})"


def calibration_problems(model: GraphModule) -> tuple[list[str], list[str]]:
    """``(degenerate, nonfinite)``: observers that saw only zeros, and ones that skipped NaN/Inf.

    A range is widened to include zero, so it has no width only when every value was
    zero (all-zero calibration data, a ReLU that was never positive): the scale is then
    the smallest possible and real data saturates. Per-channel ranges are not listed:
    a weight channel of zeros is common and harmless.

    >>> import torch
    >>> from pt2e import prepare_pt2e
    >>> from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    >>> gm = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module()
    >>> prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(
    ...     get_default_x86_inductor_quantization_config()))
    >>> _ = prepared(torch.zeros(1, 2))
    >>> degenerate, nonfinite = calibration_problems(prepared)
    >>> degenerate  # doctest: +ELLIPSIS
    ["'activation_post_process_0' (observing node 'input_1' (placeholder input)) saw only zeros"]
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    degenerate: list[str] = []
    nonfinite: list[str] = []
    seen: set[int] = set()
    for node in observer_nodes(model):
        obs = modules[str(node.target)]
        if id(obs) in seen:
            continue
        seen.add(id(obs))
        inner = getattr(obs, "activation_post_process", obs)  # a fake quantizer's observer
        skipped = getattr(inner, "nonfinite_seen", 0)
        if skipped:
            nonfinite.append(f"{_observed(node)} skipped {skipped} NaN/Inf value(s)")
        mn, mx = getattr(inner, "min_val", None), getattr(inner, "max_val", None)
        if (isinstance(mn, torch.Tensor) and isinstance(mx, torch.Tensor)
                and mn.numel() == 1 and mx.numel() == 1
                and bool(mn == 0) and bool(mx == 0)):
            degenerate.append(f"{_observed(node)} saw only zeros")
    return degenerate, nonfinite


def warn_calibration_problems(model: GraphModule, where: str = "convert_pt2e") -> None:
    """Warn once for degenerate observer ranges and once for skipped NaN/Inf values."""
    degenerate, nonfinite = calibration_problems(model)
    if degenerate:
        warnings.warn(
            f"{where}: {len(degenerate)} observer(s) saw a degenerate range (only zeros, e.g. "
            "all-zero calibration data), so their scale is the smallest possible and real data "
            "will saturate: " + "; ".join(degenerate[:10])
            + (" ..." if len(degenerate) > 10 else "")
            + ". Calibrate with representative inputs",
            UserWarning,
            stacklevel=3,
        )
    if nonfinite:
        warnings.warn(
            f"{where}: {len(nonfinite)} observer(s) skipped NaN/Inf values while calibrating "
            "(the ranges use the finite values only): " + "; ".join(nonfinite[:10])
            + (" ..." if len(nonfinite) > 10 else "")
            + ". Check the calibration inputs and the layers before these observers",
            UserWarning,
            stacklevel=3,
        )
