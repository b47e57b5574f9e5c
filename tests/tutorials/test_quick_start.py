"""The quick start runs end to end at a small size: repr, file sizes, SQNR, compiled timings."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_quick_start_smoke(capsys):
    from tutorials import quick_start

    results = quick_start.main(["--size", "256", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "Linear(in_features=256, out_features=256, bias=False, weight=Int4WeightTensor(" in out
    assert set(results) == {"bfloat16", "float32"}
    for figures in results.values():
        # group 32: a quarter of bf16 plus a bf16 scale and zero per group (+25%), and pickle overhead
        assert 0.30 <= figures["int4_mb"] / figures["bf16_mb"] <= 0.36
        assert figures["sqnr_db"] >= 19.0
        assert figures["float_ms"] > 0 and figures["int4_ms"] > 0
