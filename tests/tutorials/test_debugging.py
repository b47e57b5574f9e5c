"""The debugging walk-through runs at its small default size and writes its files."""

from __future__ import annotations


def test_debugging_tutorial(tmp_path, capsys):
    from tutorials import debugging

    result = debugging.main(tmp_path, batches=2)
    printed = capsys.readouterr().out
    assert result["worst"] == "mid"
    assert "layer_sqnr_db" in printed and "accuracy-aware fallback" in printed
    assert result["report"].met and [r.module for r in result["report"].records] == ["mid"]
    names = {p.name for p in result["saved"]}
    assert {"layers.md", "layers.csv", "layers.json"} <= names
    if "layers.png" in names:
        assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
