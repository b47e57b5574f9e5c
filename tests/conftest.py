import os

import pytest
import torch

# Deterministic, and do not let oneDNN thread storms make a loaded 2-core machine erratic:
# at most 2 threads, shared between pytest-xdist's workers when the suite runs on several.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
