"""Quantization-aware training on real data: float vs PTQ vs QAT, at int8 and 4-bit weights.

The data are scikit-learn's handwritten digits (1,797 8x8 images, bundled with the
package). A small conv + batch-norm network is trained in float, then quantized
two ways with X86InductorQuantizer:

* PTQ: ``prepare_pt2e`` -> calibrate -> ``convert_pt2e``
* QAT: ``prepare_qat_pt2e`` -> fine-tune with fake quantization -> ``convert_pt2e``

Each is done with int8, 4-bit (-7..7) and 2-bit (-1..1) symmetric per-channel
weights. Digits is an easy task: at 4 bits PTQ already keeps float accuracy; at
2 bits PTQ collapses and QAT recovers it (figures in BENCHMARKS.md). Accuracies
are of the converted models on the held-out split.

    .venv/bin/python -m tutorials.qat                 # full run (about a minute)
    .venv/bin/python -m tutorials.qat --epochs 1 --qat-epochs 1 --bits 8   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
from torch import nn
from tqdm import tqdm

from pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


def load_digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): images as float tensors in [0, 1], 1x8x8."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed,
                                              stratify=y)
    return x_tr, y_tr, x_te, y_te


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(),
                                  nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def batches(x, y, size, shuffle, generator=None):
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x) - size + 1, size):  # fixed batch size: exported graphs are static
        idx = order[i:i + size]
        yield x[idx], y[idx]


def train(model, x, y, epochs, lr, batch, desc):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    steps = epochs * (len(x) // batch)
    with tqdm(total=steps, desc=desc, leave=False) as bar:
        for _ in range(epochs):
            for xb, yb in batches(x, y, batch, True, gen):
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")


@torch.no_grad()
def accuracy(model, x, y, batch) -> float:
    correct = total = 0
    for xb, yb in batches(x, y, batch, False):
        correct += int((model(xb).argmax(1) == yb).sum())
        total += len(yb)
    return correct / total


def config(is_qat: bool, weight_bits: int):
    cfg = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if weight_bits == 8:
        return cfg
    bound = 2 ** (weight_bits - 1) - 1
    weight = dataclasses.replace(cfg.weight, quant_min=-bound, quant_max=bound)
    return dataclasses.replace(cfg, weight=weight)


def ptq(float_model, example, x_cal, weight_bits, batch):
    gm = torch.export.export(copy.deepcopy(float_model).eval(), (example,)).module()
    prepared = prepare_pt2e(gm, X86InductorQuantizer().set_global(config(False, weight_bits)))
    for xb, _ in tqdm(list(batches(x_cal, x_cal, batch, False)), desc="calibrate", leave=False):
        prepared(xb)
    return convert_pt2e(prepared)


def qat(float_model, example, x, y, weight_bits, epochs, batch):
    gm = torch.export.export(copy.deepcopy(float_model).train(), (example,)).module()
    prepared = prepare_qat_pt2e(gm, X86InductorQuantizer().set_global(config(True, weight_bits)))
    prepared = move_exported_model_to_train(prepared)
    train(prepared, x, y, epochs, 1e-3, batch, f"QAT {weight_bits}-bit")
    return convert_pt2e(move_exported_model_to_eval(prepared))


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2],
                        help="weight bit widths to compare (activations stay uint8)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    example = x_tr[: args.batch]

    model = DigitsNet()
    train(model, x_tr, y_tr, args.epochs, 3e-3, args.batch, "float")
    model.eval()
    results = {"float": accuracy(model, x_te, y_te, args.batch)}
    for bits in args.bits:
        results[f"PTQ int{bits} weights"] = accuracy(
            ptq(model, example, x_tr[:256], bits, args.batch), x_te, y_te, args.batch)
        results[f"QAT int{bits} weights"] = accuracy(
            qat(model, example, x_tr, y_tr, bits, args.qat_epochs, args.batch),
            x_te, y_te, args.batch)

    print(f"\nDigits test accuracy ({len(x_te) // args.batch * args.batch} images), "
          "uint8 activations:")
    print("| model | accuracy |\n|---|---|")
    for name, acc in results.items():
        print(f"| {name} | {100 * acc:.1f}% |")
    return results


if __name__ == "__main__":
    main()
