"""The PTQ tutorials run end to end at their small default sizes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_ptq_tutorial():
    from tutorials import ptq

    assert ptq.main() >= 25.0


def test_ptq_x86_inductor_tutorial():
    from tutorials import ptq_x86_inductor

    result = ptq_x86_inductor.main()
    assert result["sqnr_db"] >= 25.0
