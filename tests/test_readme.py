"""The README's "Use" snippet runs as written and prints what the README says it prints."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_use_snippet_runs_and_prints_the_documented_output():
    code = _blocks("python")[0]
    after = (ROOT / "README.md").read_text().split("`tests/test_readme.py` runs this block", 1)[1]
    expected = after.split("```\n", 2)[1].strip().splitlines()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == expected
