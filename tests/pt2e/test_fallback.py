"""The accuracy-aware fallback composed with a float pass (SmoothQuant before the search).

The fallback's own search is tested in tests/pt2e/test_accuracy.py."""

from __future__ import annotations

import torch
from torch import nn

from pt2e import accuracy_aware_fallback
from pt2e.smoothing import SmoothQuant
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config


class Outliers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc, self.out = nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 8)
        with torch.no_grad():
            self.norm.weight[:3] = torch.tensor([40.0, -25.0, 60.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.norm(x))))


def test_smoothquant_first_needs_fewer_float_layers() -> None:
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(32, 16, generator=g) for _ in range(4)]
    gm = torch.export.export(Outliers().eval(), (data[0],)).module()
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    plain = accuracy_aware_fallback(gm, q, data, target_sqnr=38.0).report
    smoothed = accuracy_aware_fallback(gm, q, data, target_sqnr=38.0,
                                       passes=[SmoothQuant(data, alpha=0.5)]).report
    assert not plain.full_int8 >= 38.0 and len(plain.records) >= 1
    assert smoothed.met and len(smoothed.records) < len(plain.records)
    assert smoothed.passes == ("SmoothQuant(alpha=0.5)",)
    assert "after SmoothQuant(alpha=0.5)" in smoothed.title
