"""The QAT tutorial runs end to end at a small size."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_qat_tutorial_smoke(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from tutorials import qat

    results = qat.main(["--epochs", "2", "--qat-epochs", "1", "--bits", "8"])
    assert set(results) == {"float", "PTQ int8 weights", "QAT int8 weights"}
    # a converted int8 model that lost its accuracy would show here
    assert results["PTQ int8 weights"] >= results["float"] - 0.05
    assert results["QAT int8 weights"] >= 0.8
