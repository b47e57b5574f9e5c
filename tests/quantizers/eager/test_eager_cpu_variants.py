"""The eager suite on other CPUs: ATen's AVX2/DEFAULT kernels and oneDNN without VNNI.

Other machines may be AVX2-only. ``ATEN_CPU_CAPABILITY`` lowers ATen's kernel
dispatch and ``ONEDNN_MAX_CPU_ISA=AVX2`` takes VNNI away from oneDNN (its
``_int_mm`` then saturates, which the kernel probe must notice), so the numeric and
API tests are rerun in a subprocess as such a machine. An int4 weight packed here
must refuse to load there: the packed layout is ISA-specific.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from quantizers.eager import Int4WeightOnlyConfig, quantize_

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[3]
HERE = pathlib.Path(__file__).resolve().parent


def _other_capability() -> str:
    return "default" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "avx2"


def _env(capability: str) -> dict[str, str]:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, ONEDNN_MAX_CPU_ISA="AVX2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_numerics_and_api_hold_on_a_lesser_cpu(capability):
    tests = [str(HERE / "test_eager_numerics.py"), str(HERE / "test_eager_api.py")]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests,
         "-k", "not api.py or kernel or to_dtype or repr"],
        cwd=ROOT, env=_env(capability), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_int4_packed_here_is_refused_by_another_isa(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, Int4WeightOnlyConfig(group_size=32))
    path = tmp_path / "int4.pt"
    torch.save(model.state_dict(), path)
    script = (
        "import sys, torch, quantizers.eager\n"
        "try:\n"
        f"    torch.load({str(path)!r})\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e); sys.exit(0)\n"
        "sys.exit('loaded without error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(_other_capability()),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    here = torch.backends.cpu.get_cpu_capability()
    assert f"was packed for {here} CPU kernels" in proc.stdout
    assert "UnsupportedOperationError" in proc.stdout
