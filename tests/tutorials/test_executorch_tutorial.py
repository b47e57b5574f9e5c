"""The ExecuTorch export tutorial runs end to end at its small default size."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_executorch_export_tutorial(tmp_path):
    pytest.importorskip("executorch.runtime")
    from tutorials import executorch_export

    result = executorch_export.main(out_dir=str(tmp_path))
    assert result["sqnr_int8_db"] >= 25.0
    assert result["sqnr_fp32_db"] >= 60.0
    assert (tmp_path / "model_int8.pte").exists()
