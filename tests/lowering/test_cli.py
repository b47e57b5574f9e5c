"""The ``pt2e`` command: data loading and errors in-process, whole runs through subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowering.cli import load_batches, main, resolve_backend

ROOT = Path(__file__).resolve().parents[2]


class _Net(nn.Module):
    """conv -> relu -> linear, plus an activation matmul (x86 leaves it float: opt-in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 6 * 6, 16)

    def forward(self, x):
        h = self.fc(torch.relu(self.conv(x)).flatten(1))
        return torch.matmul(h.unsqueeze(2), h.unsqueeze(1)).sum(-1)


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(2, 3, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "model.pt2")
    torch.save([torch.randn(2, 3, 8, 8) for _ in range(3)], tmp_path / "calib.pt")
    return tmp_path


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pt2e", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


# --------------------------------------------------------------------------- fast tier


@pytest.mark.parametrize("name, expected", [("x86", "x86_inductor"), ("xnnpack", "xnnpack"),
                                            ("x86_inductor", "x86_inductor")])
def test_backend_by_name_or_unique_prefix(name, expected):
    assert resolve_backend(name).name == expected


@pytest.mark.parametrize("name, word", [("tensorrt", "unknown"), ("x", "ambiguous")])
def test_unknown_or_ambiguous_backend_is_a_user_error(name, word, capsys):
    status = main(["inspect", "whatever.pt2", "--backend", name])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("pt2e: error:") and word in err and "Traceback" not in err


def test_calibration_formats(tmp_path):
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    torch.save(a, tmp_path / "one.pt")
    torch.save((a, b), tmp_path / "pair.pt")
    torch.save([a, (a, b)], tmp_path / "list.pt")
    np.savez(tmp_path / "arrays.npz", a.numpy(), b.numpy())
    assert [len(x) for x in load_batches(tmp_path / "one.pt")] == [1]
    assert [len(x) for x in load_batches(tmp_path / "pair.pt")] == [2]
    assert [len(x) for x in load_batches(tmp_path / "list.pt")] == [1, 2]
    (npz,) = load_batches(tmp_path / "arrays.npz")
    assert torch.equal(npz[0], a) and torch.equal(npz[1], b)
    # a folder: every file, sorted by name; --batches caps the count
    assert len(load_batches(tmp_path)) == 1 + 1 + 2 + 1
    assert len(load_batches(tmp_path, limit=2)) == 2


@pytest.mark.parametrize("content, message", [
    ("missing", "does not exist"),
    ("text", "expected a .pt/.pth or .npz file"),
    ("dict", "a batch must be a tensor or a tuple of tensors"),
])
def test_bad_calibration_data_is_a_user_error(files, content, message, capsys):
    calib = files / ("calib.txt" if content == "text" else "bad.pt")
    if content == "text":
        calib.write_text("1 2 3")
    elif content == "dict":
        torch.save({"x": torch.randn(2)}, calib)
    status = main(["quantize", str(files / "model.pt2"), "--backend", "x86", "--calib", str(calib),
                   "--out", str(files / "o.pt2")])
    assert status == 2 and message in capsys.readouterr().err


def test_batch_of_the_wrong_shape_says_what_to_fix(files, capsys):
    torch.save([torch.randn(2, 3, 9, 9)], files / "wrong.pt")
    status = main(["quantize", str(files / "model.pt2"), "--backend", "x86", "--calib",
                   str(files / "wrong.pt"), "--out", str(files / "o.pt2"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "[(2, 3, 9, 9)]" in err and "must match the exported program" in err


def test_not_a_program_is_a_user_error(files, capsys):
    (files / "junk.pt2").write_bytes(b"not a zip")
    assert main(["inspect", str(files / "junk.pt2")]) == 2
    assert "is not a torch.export program" in capsys.readouterr().err


def test_bad_option_is_a_user_error(files, capsys):
    assert main(["inspect", str(files / "model.pt2"), "--option", "oops"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_recipe_needs_static_quantization(files, capsys):
    status = main(["quantize", str(files / "model.pt2"), "--backend", "x86", "--config", "dynamic",
                   "--calib", str(files / "calib.pt"), "--out", str(files / "o.pt2"), "--recipe", "auto", "--quiet"])
    assert status == 2 and "--recipe needs --config static" in capsys.readouterr().err


# --------------------------------------------------------------------------- whole runs


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["quantize"], ["inspect"], ["compare"], ["backends"]],
                         ids=["top", "quantize", "inspect", "compare", "backends"])
def test_every_command_has_help_with_an_example(command, tmp_path):
    done = _cli(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0 and "example:" in done.stdout


@pytest.mark.slow
def test_inspect_lists_observers_and_the_float_only_op(files):
    done = _cli("inspect", "model.pt2", "--backend", "x86", cwd=files)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "observed value(s)" in out
    assert "X86InductorQuantizer: 1 compute op(s) stay float" in out
    assert "aten.matmul.default" in out and "opt-in" in out


@pytest.mark.slow
def test_quantize_for_x86_writes_a_program_that_runs_int8(files):
    done = _cli("quantize", "model.pt2", "--backend", "x86", "--calib", "calib.pt", "--out",
                "out/int8.pt2", "--report", "out/report.md", "--quiet", cwd=files)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. torch's own LeafSpec deprecation
    report = (files / "out" / "report.md").read_text()
    assert "onednn.qconv_pointwise" in report and "onednn.qlinear_pointwise" in report
    assert "SQNR on the held-back last batch" in report
    from lowering import compile_x86

    program = torch.export.load(files / "out" / "int8.pt2")
    compiled = compile_x86(program.module(), (torch.randn(2, 3, 8, 8),))
    assert compiled.kernels is not None and compiled.kernels.int8["onednn.qlinear_pointwise"] == 1

    # the saved converted program compares layer by layer against the float file
    done = _cli("compare", "model.pt2", "out/int8.pt2", "--data", "calib.pt", "--out",
                "out/layers.json", cwd=files)
    assert done.returncode == 0, done.stderr
    import json

    rows = json.loads((files / "out" / "layers.json").read_text())
    text = json.dumps(rows)
    assert "aten.conv2d.default" in text and "aten.linear.default" in text


@pytest.mark.slow
def test_quantize_for_xnnpack_writes_a_pte_that_runs(files):
    done = _cli("quantize", "model.pt2", "--backend", "xnnpack", "--option", "is_per_channel=True",
                "--calib", "calib.pt", "--out", "model.pte", "--quiet", cwd=files)
    assert done.returncode == 0, done.stderr
    assert "XNNPACK delegates:" in done.stdout and "aten.convolution.default x1" in done.stdout
    from lowering import ExecuTorchRunner

    runner = ExecuTorchRunner((files / "model.pte").read_bytes())
    out = runner(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 16)


@pytest.mark.slow
def test_quantize_for_onnx_writes_a_model_onnxruntime_runs_in_int8(files):
    done = _cli("quantize", "model.pt2", "--backend", "onnx", "--calib", "calib.pt", "--out",
                "model.onnx", "--quiet", cwd=files)
    assert done.returncode == 0, done.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(files / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: np.random.randn(2, 3, 8, 8).astype("float32")})
    assert out.shape == (2, 16)
    assert "QLinearConv" in done.stdout  # the report read from onnxruntime's optimized graph


@pytest.mark.slow
def test_quantize_for_openvino_writes_ir_that_compiles_to_int8(files):
    done = _cli("quantize", "model.pt2", "--backend", "openvino", "--calib", "calib.pt", "--out",
                "ir/model.xml", "--quiet", cwd=files)
    assert done.returncode == 0, done.stderr
    import openvino as ov

    from lowering.openvino import runtime_report

    compiled = ov.Core().compile_model(ov.Core().read_model(str(files / "ir" / "model.xml")), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    report = runtime_report(compiled, inference_precision="f32")
    assert report.count("Convolution", precision="int8") >= 1
    out = compiled.create_infer_request().infer([np.random.randn(2, 3, 8, 8).astype("float32")])
    assert next(iter(out.values())).shape == (2, 16)


@pytest.mark.slow
def test_quantize_with_the_recipe_reports_its_steps_and_the_artefact_runs(files, capsys):
    torch.save([torch.randn(2, 3, 8, 8) for _ in range(2)], files / "choose.pt")
    status = main(["quantize", str(files / "model.pt2"), "--backend", "xnnpack", "--option", "is_per_channel=True",
                   "--calib", str(files / "calib.pt"), "--recipe", "auto", "--recipe-data", str(files / "choose.pt"),
                   "--out", str(files / "model.pte"), "--report", str(files / "report.md"), "--quiet"])
    assert status == 0, capsys.readouterr().err
    report = (files / "report.md").read_text()
    assert "## Recipe" in report and "Steps chosen on 2 batch(es)" in report
    assert "recipe 'convnet'" in report and "default flow" in report and "GPTQ weight rounding" in report
    assert "activation range margin (x" in report  # held-out batches: margins were tried
    from lowering import ExecuTorchRunner

    runner = ExecuTorchRunner((files / "model.pte").read_bytes())
    assert runner(torch.randn(2, 3, 8, 8)).shape == (2, 16)
