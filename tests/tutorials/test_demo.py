"""`make demo`'s script runs end to end at a small size and keeps int8 accuracy near float."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_demo_runs_small(capsys):
    from tutorials import demo

    result = demo.main(["--epochs", "1", "--batch", "32", "--width", "8", "--rounds", "1",
                        "--iters", "2"])
    out = capsys.readouterr().out
    assert "compiled kernels: int8: " in out and "onednn.qconv_pointwise x3" in out
    (kernels,) = [line for line in out.splitlines() if line.startswith("compiled kernels:")]
    assert kernels.endswith("float: none")
    assert result["acc_int8"] >= result["acc_fp32"] - 0.05
