"""The OpenVINO and XPU tutorials run end to end at their small default sizes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_openvino_tutorial():
    pytest.importorskip("openvino")
    from tutorials import openvino

    result = openvino.main()
    assert min(result.values()) >= 30.0, result


def test_xpu_inductor_tutorial():
    pytest.importorskip("openvino")
    from pt2e.cpu import cpu_has_vnni
    from tutorials import xpu_inductor

    # the XPU recipe's full-range weights saturate OpenVINO's int8 kernels on a CPU without VNNI
    # (to_openvino warns; docs/openvino.md): the figure holds where the CPU has VNNI
    if cpu_has_vnni():
        result = xpu_inductor.main()
        assert result["sqnr_openvino_db"] >= 30.0, result
    else:
        with pytest.warns(UserWarning, match="has no VNNI"):
            result = xpu_inductor.main()
    assert result["sqnr_eager_db"] >= 30.0, result
