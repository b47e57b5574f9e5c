"""Train/eval switching for exported models.

An exported graph has dropout and batch norm baked in with a fixed ``train``
flag: ``model.eval()`` on a ``GraphModule`` changes nothing in the graph. These
helpers rewrite the flags in the graph instead, and
:func:`allow_exported_model_train_eval` makes ``.train()`` / ``.eval()`` call them.

>>> import torch
>>> x = torch.ones(8, 8)
>>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Dropout(0.5)), (x,)).module()
>>> gm = move_exported_model_to_train(gm)
>>> _ = torch.manual_seed(0)
>>> y = gm(x)                      # dropout active: some zeros, the rest scaled by 1 / (1 - p)
>>> int((y == 0).sum()) > 0, sorted(set(y.flatten().tolist()))
(True, [0.0, 2.0])
>>> gm = move_exported_model_to_eval(gm)
>>> torch.equal(gm(x), x)          # dropout off: the identity
True
"""

from __future__ import annotations

import types

import torch
from torch.fx import GraphModule

from .errors import ExportedTrainEvalError

__all__ = [
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "allow_exported_model_train_eval",
    "disallow_exported_model_train_eval",
]

aten = torch.ops.aten

# op -> index of its "train" / "training" argument; the in-place variants are what
# F.dropout(..., inplace=True) and nn.Dropout(inplace=True) export to
_TRAIN_FLAG_ARG = {
    aten.dropout.default: 2,
    aten.dropout_.default: 2,
    aten.feature_dropout.default: 2,
    aten.feature_dropout_.default: 2,
    aten.alpha_dropout.default: 2,
    aten.alpha_dropout_.default: 2,
    aten.feature_alpha_dropout.default: 2,
    aten.feature_alpha_dropout_.default: 2,
    aten.batch_norm.default: 5,
}


def _set_train_flag(model: GraphModule, train: bool) -> GraphModule:
    changed = False
    for node in model.graph.nodes:
        idx = _TRAIN_FLAG_ARG.get(node.target)
        if node.op != "call_function" or idx is None:
            continue
        if len(node.args) > idx:
            args = list(node.args)
            if args[idx] != train:
                args[idx] = train
                node.args = tuple(args)
                changed = True
        else:
            name = node.target._schema.arguments[idx].name
            if node.kwargs.get(name) != train:
                node.kwargs = {**node.kwargs, name: train}
                changed = True
    if changed:
        model.recompile()
    # keep nn.Module.training consistent for code that inspects it
    for m in model.modules():
        m.training = train
    return model


def move_exported_model_to_eval(model: GraphModule) -> GraphModule:
    """Switch dropout off and batch norm to running statistics in an exported model.

    In-place dropout (``nn.Dropout(inplace=True)``) is switched too.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Dropout(0.5).train(), (torch.ones(8),)).module()
    >>> torch.equal(move_exported_model_to_eval(gm)(torch.ones(8)), torch.ones(8))
    True
    """
    return _set_train_flag(model, False)


def move_exported_model_to_train(model: GraphModule) -> GraphModule:
    """Switch dropout on and batch norm to batch statistics in an exported model.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Dropout(0.5).eval(), (torch.ones(64),)).module()
    >>> bool((move_exported_model_to_train(gm)(torch.ones(64)) == 0).any())
    True
    """
    return _set_train_flag(model, True)


def _train(self: GraphModule, mode: bool = True) -> GraphModule:
    return _set_train_flag(self, mode)


def _eval(self: GraphModule) -> GraphModule:
    return _set_train_flag(self, False)


def allow_exported_model_train_eval(model: GraphModule) -> GraphModule:
    """Make ``model.train()`` / ``model.eval()`` rewrite the graph's dropout/batch-norm flags.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Dropout(0.5), (torch.randn(3),)).module()
    >>> gm = allow_exported_model_train_eval(gm)
    >>> gm.eval() is gm
    True
    """
    model.train = types.MethodType(_train, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_eval, model)  # type: ignore[method-assign]
    return model


def _refuse_train(self: GraphModule, mode: bool = True) -> GraphModule:
    raise ExportedTrainEvalError(
        "Calling .train() or .eval() on an exported (prepared or converted) model does not "
        "change its dropout or batch norm. Use pt2e.move_exported_model_to_train(model) / "
        "pt2e.move_exported_model_to_eval(model), or call "
        "pt2e.allow_exported_model_train_eval(model) once to make .train()/.eval() do that"
    )


def _refuse_eval(self: GraphModule) -> GraphModule:
    return _refuse_train(self, False)


def disallow_exported_model_train_eval(model: GraphModule) -> GraphModule:
    """Make ``.train()`` / ``.eval()`` raise :class:`ExportedTrainEvalError`, pointing to the helpers above.

    >>> import torch
    >>> gm = torch.export.export(torch.nn.Dropout(0.5), (torch.randn(3),)).module()
    >>> try:
    ...     disallow_exported_model_train_eval(gm).eval()
    ... except NotImplementedError as e:
    ...     type(e).__name__
    'ExportedTrainEvalError'
    """
    model.train = types.MethodType(_refuse_train, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_refuse_eval, model)  # type: ignore[method-assign]
    return model
