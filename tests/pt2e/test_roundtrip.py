"""A converted model survives torch.export + save/load with bit-identical outputs."""

from __future__ import annotations

import io

import torch
from support.models import SmallCNN, export
from support.reference_quantizer import ReferenceQuantizer

from pt2e import convert_pt2e, prepare_pt2e


def test_export_save_load_bit_identical():
    x = torch.randn(2, 3, 16, 16)
    prepared = prepare_pt2e(export(SmallCNN(), x), ReferenceQuantizer())
    prepared(x)
    converted = convert_pt2e(prepared)
    ep = torch.export.export(converted, (x,))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    assert torch.equal(loaded(x), converted(x))
    # weights travel as int8, not float
    int8 = [t for t in ep.state_dict.values() if t.dtype == torch.int8]
    assert len(int8) == 3
