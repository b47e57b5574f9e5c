"""The ONNX export tutorial runs end to end at its small default size."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_onnx_export_tutorial(tmp_path):
    pytest.importorskip("onnxruntime")
    from tutorials import onnx_export

    result = onnx_export.main(out_dir=str(tmp_path))
    assert result["sqnr_b1_db"] >= 25.0 and result["sqnr_b8_db"] >= 25.0
    assert result["int8_layers"] >= 2  # the first conv (QLinearConv) and the linear head
    assert (tmp_path / "model_int8.onnx").exists()
