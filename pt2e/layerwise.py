"""What the passes that mend a converted model layer by layer share (bias correction, GPTQ):
pairing each conv/linear of the quantized model with its float twin, and running the
quantized model on every calibration batch at once, node by node, so that a pass can change
a layer and the layers after it see the change.

>>> import torch
>>> gm = torch.export.export(torch.nn.Linear(2, 3), (torch.ones(1, 2),)).module()
>>> seen = {}
>>> def visit(node, runs):      # after each node: its value on every batch
...     if node in layers(gm):
...         seen[node.name] = [tuple(r.env[node].shape) for r in runs]
>>> run_in_lockstep(gm, [torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2)], visit)
>>> seen
{'linear': [(1, 3), (1, 3), (1, 3)]}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.utils._pytree import tree_leaves

from .batchnorm import fold_bn_into_preceding_op
from .errors import ArgumentTypeError, ArgumentValueError
from .graph import remove_dead_code
from .ops import CONV_OPS, LINEAR_OPS

__all__ = ["layers", "batch_args", "float_twins", "run_in_lockstep", "checked_inputs"]


def layers(gm: GraphModule) -> list[Node]:
    """The conv and linear nodes of ``gm``, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in CONV_OPS | LINEAR_OPS]


def batch_args(batch: Any) -> list[Any]:
    """The positional arguments of one calibration batch (a tuple of arguments, or one tensor)."""
    return tree_leaves(batch if isinstance(batch, tuple) else (batch,))


def checked_inputs(who: str, float_model: object, calibration_data: Sequence[Any]) -> list[Any]:
    """Refuse what a layer-by-layer pass cannot use, naming the pass ``who``; return the batches."""
    if not isinstance(float_model, GraphModule):
        raise ArgumentTypeError(
            f"{who} expects the exported float model, got {type(float_model).__name__}; "
            "pass torch.export.export(model, example_args).module()")
    data = list(calibration_data)
    if not data:
        raise ArgumentValueError(f"{who} got no calibration_data; pass a list of batches")
    return data


def float_twins(who: str, float_model: GraphModule, quantized: GraphModule) -> tuple[GraphModule, dict[Node, Node]]:
    """A copy of ``float_model`` prepared as ``prepare_pt2e``/``convert_pt2e`` see it (batch
    norms folded, dead code removed, so the layers match one to one in graph order) and the
    map from each conv/linear of ``quantized`` to its float twin in that copy."""
    ref = copy.deepcopy(float_model)
    fold_bn_into_preceding_op(ref)
    remove_dead_code(ref)  # as convert_pt2e does (an unused BERT pooler)
    f_layers, q_layers = layers(ref), layers(quantized)
    if len(f_layers) != len(q_layers):
        raise ArgumentValueError(
            f"{who}: the float model has {len(f_layers)} conv/linear layers and the "
            f"quantized model {len(q_layers)}; pass the float model the quantized one was "
            "prepared from (after the same float passes, e.g. SmoothQuant)")
    return ref, dict(zip(q_layers, f_layers))


def run_in_lockstep(gm: GraphModule, batches: Sequence[Any],
                    visit: Callable[[Node, list[Interpreter]], None]) -> None:
    """Run ``gm`` on all ``batches`` together, node by node, without gradients.

    After each node has run on every batch, ``visit(node, runs)`` is called; ``runs[i].env``
    holds the live values of batch ``i``, and a visit may replace values or change constants
    (re-running nodes with ``runs[i].run_node``) before the later nodes read them. A value is
    dropped once its last reader has run, so only live activations are kept.
    """
    nodes = list(gm.graph.nodes)
    last_use: dict[Node, int] = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last_use[a] = i
    runs = []
    for batch in batches:
        it = Interpreter(gm, garbage_collect_values=False)
        it.args_iter = iter(batch_args(batch))
        runs.append(it)
    with torch.no_grad():
        for i, n in enumerate(nodes):
            if n.op == "output":
                break
            for it in runs:
                it.env[n] = it.run_node(n)
            visit(n, runs)
            for a in n.all_input_nodes:
                if last_use.get(a) == i:
                    for it in runs:
                        it.env.pop(a, None)
