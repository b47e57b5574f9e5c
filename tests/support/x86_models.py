"""Tiny models shared by the X86 quantizer, lowering and torchao-comparison tests."""

from __future__ import annotations

import torch
from torch import nn


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ConvAddRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

    def forward(self, x, y):
        return self.relu(self.conv(x) + y)


class LinearRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.relu = nn.Linear(16, 16), nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc(x))


class LinearAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.fc(x)


class ConvPoolConv(nn.Module):
    """conv -> relu -> maxpool -> conv: the pool runs in int8 with its input's qparams."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.relu, self.pool = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        return self.c2(self.pool(self.relu(self.c1(x))))


class ConvCat(nn.Module):
    """Two conv branches concatenated, then a conv: cat inputs and output share qparams."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


class Attention(nn.Module):
    """Hand-written single-head attention: q/k/v projections, two matmuls, output projection."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        att = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)).softmax(-1)
        return self.o(torch.matmul(att, self.v(x)))


class ResBlocks(nn.Module):
    """One ``self.relu`` and one ``self.fc`` instance used several times (ResNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu, self.fc = nn.ReLU(), nn.Linear(4, 4)

    def forward(self, x):
        y = self.relu(self.c1(x))
        y = self.relu(self.c2(y) + x)
        z = y.mean((2, 3))
        return self.fc(self.relu(self.fc(z)))


class WithPooler(nn.Module):
    """A BERT-like encoder whose pooler output is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.pooler, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        _pooled = torch.tanh(self.pooler(h[:, 0]))  # noqa: F841  (unused, as in BERT classifiers)
        return self.head(h)


class SmallCNN(nn.Module):
    """conv-bn-relu, residual add, maxpool, linear head (one module per call, so torchao handles it)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.relu1, self.relu2 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = self.relu1(self.bn(self.c1(x)))
        y = self.relu2(self.c2(y) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


class MLP(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, 4 * d), nn.Linear(4 * d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block from nn.Linear modules and SDPA (each module called once)."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.ln1(x)

        def split(t):
            return t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2)

        a = nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


def example_inputs(name: str) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs for the models above, by class name."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "ConvBnRelu": [(2, 3, 8, 8)], "ConvAddRelu": [(2, 3, 8, 8), (2, 3, 8, 8)],
        "LinearRelu": [(4, 16)], "LinearAdd": [(4, 16)], "ConvPoolConv": [(2, 3, 10, 10)],
        "ConvCat": [(2, 3, 8, 8)], "Attention": [(2, 8, 16)], "ResBlocks": [(2, 4, 8, 8)],
        "WithPooler": [(2, 8, 16)], "SmallCNN": [(4, 3, 8, 8)], "MLP": [(8, 32)],
        "TransformerBlock": [(2, 16, 32)],
    }
    return tuple(torch.randn(*s, generator=g) for s in shapes[name])
