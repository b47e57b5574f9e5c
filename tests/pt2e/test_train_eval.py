"""Train/eval switching on exported models."""

from __future__ import annotations

import torch
from torch import nn

from pt2e import (
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)


def _model():
    return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))


def _export(train: bool):
    m = _model()
    m.train(train)
    return torch.export.export(m, (torch.randn(4, 8),)).module()


def test_dropout_switches():
    gm = move_exported_model_to_train(_export(False))
    x = torch.ones(4, 8)
    assert (gm(x) == 0).any()
    gm = move_exported_model_to_eval(gm)
    assert torch.equal(gm(x), gm(x))


def test_batch_norm_switches_between_batch_and_running_stats():
    gm = move_exported_model_to_train(_export(False))
    bn_mean = next(b for n, b in gm.named_buffers() if n.endswith("running_mean"))
    before = bn_mean.clone()
    gm(torch.randn(4, 8) + 3)
    assert not torch.equal(bn_mean, before)  # training updates running stats
    gm = move_exported_model_to_eval(gm)
    frozen = bn_mean.clone()
    gm(torch.randn(4, 8) + 3)
    assert torch.equal(bn_mean, frozen)


def test_allow_train_eval_makes_methods_work():
    gm = allow_exported_model_train_eval(_export(True))
    gm.eval()
    x = torch.ones(4, 8)
    assert torch.equal(gm(x), gm(x))
    gm.train()
    assert (gm(x) == 0).any()
