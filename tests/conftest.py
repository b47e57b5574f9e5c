import os

import pytest
import torch

# Deterministic, and do not let oneDNN thread storms make a loaded 2-core machine erratic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
