"""Progress of long calls: a bar per step on a terminal, nothing in a log, INFO lines for logging."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

from pt2e import accuracy_aware_fallback, quantize_with_recipe
from pt2e.progress import Progress, iterate
from quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

pytest.importorskip("tqdm")


def _quantizer() -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def _mlp() -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 16, generator=g) for _ in range(3)]
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    return torch.export.export(m, (data[0],)).module(), data


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pt2e.progress.is_terminal", lambda: True)  # bars are drawn on terminals only


def test_progress_counts_steps_and_draws_the_last_note(terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("searching", total=3) as bar:
        for note in ("first", "second", "third"):
            bar.advance(note)
    err = capsys.readouterr().err
    assert (bar.count, bar.note) == (3, "third")
    assert "searching" in err and "3/3" in err and "third" in err


def test_nothing_is_drawn_when_disabled_or_stderr_is_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()  # not a tty, like a log file or CI
    monkeypatch.setattr("sys.stderr", stream)
    with Progress("searching", total=2) as bar:
        bar.advance("one")
    assert list(iterate(range(3), desc="calibrating", unit="batch")) == [0, 1, 2]
    assert stream.getvalue() == "" and bar.count == 1


def test_bar_is_closed_when_the_work_fails(terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="boom"), Progress("searching", total=5) as bar:
        bar.advance("one")
        raise RuntimeError("boom")
    assert bar._bar is None and "1/5" in capsys.readouterr().err


def test_recipe_shows_one_bar_step_per_candidate_and_logs_scores(
        terminal: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    gm, data = _mlp()
    with caplog.at_level(logging.INFO, logger="pt2e.recipe"):
        report = quantize_with_recipe(gm, _quantizer(), data, family="transformer", alpha=(0.5, 0.8)).report
    err = capsys.readouterr().err
    # default flow, two SmoothQuant alphas, GPTQ, bias correction
    assert "recipe (transformer)" in err and "5/5" in err and "bias correction" in err
    logged = [r.getMessage() for r in caplog.records if r.name == "pt2e.recipe"]
    assert len(logged) == 5 and logged[0] == f"recipe: default flow -> {report.baseline:.5g}"


def test_recipe_draws_nothing_with_progress_false(terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    gm, data = _mlp()
    quantize_with_recipe(gm, _quantizer(), data, family="transformer", alpha=0.5, progress=False)
    assert capsys.readouterr().err == ""


def test_fallback_shows_each_try(terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    gm, data = _mlp()
    report = accuracy_aware_fallback(gm, _quantizer(), data, target_sqnr=200.0).report  # unreachable: every try
    final = capsys.readouterr().err.split("\r")[-1]  # the bar as closed (tqdm skips quick redraws)
    assert final.startswith(f"accuracy-aware fallback: {len(report.trials)}try")  # one step per trial
    assert f"{max(k for k, _ in report.trials)} layers float" in final
