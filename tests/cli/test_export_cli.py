"""Tests of ``edl export FILE --format onnx|safetensors|pt2 -o OUT``: what it writes runs in other
runtimes (onnxruntime, ``safetensors`` + ``load_state_dict``, ``torch.export.load``) with the outputs
of the decoded model; bad input ends in one line on stderr, exit status 2 and no file written."""

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

import efficientdl as edl
from efficientdl import format as fmt
from efficientdl import models
from efficientdl.cli.main import main

ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")


def run_quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:          # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("edl export: error: "), err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    """LeNet-300-100 and LeNet-5, pruned then weight-shared, as compressed files."""
    folder = tmp_path_factory.mktemp("export_cli")
    out = {}
    for name, bits in (("lenet300", {"Linear": 4}), ("lenet5", {"Linear": 4, "Conv2d": 5})):
        torch.manual_seed(0)
        model = models.create(name)
        model, _ = edl.compress.prune(model, sparsity=0.85)
        model, _ = edl.compress.share(model, bits=bits)
        fmt.save(model, folder / f"{name}.edlz")
        out[name] = folder / f"{name}.edlz"
    return out


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _x(batch):
    return torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(batch))


def _reference(path, x):
    with torch.no_grad():
        return fmt.load(path)(x).numpy()


def test_onnx_runs_in_onnxruntime(lenet_files, tmp_path):
    src = lenet_files["lenet5"]
    code, out, err = run_quiet(["export", src, "--format", "onnx", "-o", tmp_path / "m.onnx", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["format"] == "onnx" and result["size_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert result["input_shape"] == [1, 28, 28] and result["source"] == str(src)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (4, 1):
        x = _x(batch)
        (y,) = session.run(None, {"input": x.numpy()})
        expected = _reference(src, x)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_safetensors_weights_and_codebooks(lenet_files, tmp_path):
    src = lenet_files["lenet300"]
    code, out, err = run_quiet(["export", src, "--format", "safetensors", "-o", tmp_path / "m.safetensors"])
    assert code == 0, err
    assert "m.safetensors" in out and "bytes" in out
    tensors = safetensors_torch.load_file(str(tmp_path / "m.safetensors"))
    fresh = models.create("lenet300")
    fresh.load_state_dict({k: v for k, v in tensors.items() if "::" not in k})
    x = _x(3)
    with torch.no_grad():
        assert np.array_equal(fresh.eval()(x).numpy(), _reference(src, x))
    for layer in ("fc1", "fc2", "fc3"):
        w = tensors[f"{layer}.weight"]
        codebook, indices = tensors[f"{layer}.weight::codebook"], tensors[f"{layer}.weight::indices"]
        assert indices.dtype == torch.uint8 and codebook.numel() == 16
        assert torch.equal(codebook[indices.long()], w)


def test_pt2_default_output_beside_the_file(lenet_files, tmp_path):
    src = tmp_path / "copy.edlz"
    src.write_bytes(lenet_files["lenet300"].read_bytes())
    code, _, err = run_quiet(["export", src, "--format", "pt2"])
    assert code == 0, err
    module = torch.export.load(str(tmp_path / "copy.pt2")).module()
    x = _x(2)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), _reference(src, x), rtol=1e-5, atol=1e-7)


def test_input_shape_option(lenet_files, tmp_path):
    code, out, err = run_quiet(["export", lenet_files["lenet300"], "--format", "pt2", "-o", tmp_path / "m.pt2",
                                "--input-shape", "1,14,56", "--json"])
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [1, 14, 56]
    code, _, err = run_quiet(["export", lenet_files["lenet300"], "--format", "pt2", "-o", tmp_path / "n.pt2",
                              "--input-shape", "1,0,28"])
    assert code == 2 and "--input-shape" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.pt2").exists()


def test_missing_package_is_one_line_with_the_extra(lenet_files, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    code, _, err = run_quiet(["export", lenet_files["lenet300"], "--format", "onnx", "-o", tmp_path / "m.onnx"])
    assert_one_line_error(code, err)
    assert err.strip() == ("edl export: error: --format onnx needs the 'onnx' package "
                           "(pip install 'efficientdl[export]')")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "corrupt", "unwritable", "directory", "unknown format"])
def test_bad_input_is_one_line_and_writes_nothing(lenet_files, tmp_path, case):
    src, fmt_name, out = lenet_files["lenet300"], "safetensors", tmp_path / "o.safetensors"
    if case == "missing":
        src = tmp_path / "nope.edlz"
    elif case == "corrupt":
        data = bytearray(lenet_files["lenet300"].read_bytes())
        data[40:60] = b"\x00" * 20
        src = tmp_path / "corrupt.edlz"
        src.write_bytes(bytes(data))
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "o.safetensors"
    elif case == "directory":
        out = tmp_path / "a_dir"
        out.mkdir()
    else:
        fmt_name = "tflite"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_quiet(["export", src, "--format", fmt_name, "-o", out])
    if case == "unknown format":         # argparse's own one line
        assert code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1
    else:
        assert_one_line_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".tmp")]


class DataDependent(nn.Module):
    """Registered for one test: its forward branches on the input's values."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28):
        super().__init__()
        self.fc = nn.Linear(in_channels * input_size * input_size, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if x.mean() > 0 else self.fc(-x)


@pytest.mark.parametrize("format", ["pt2", "onnx"])
def test_model_that_cannot_be_exported(tmp_path, monkeypatch, format):
    monkeypatch.setitem(models._REGISTRY, "datadependent", DataDependent)
    model = models.create("datadependent", input_size=28)     # recorded, so the input shape is known
    fmt.save(model, tmp_path / "dd.edlz")
    code, _, err = run_quiet(["export", tmp_path / "dd.edlz", "--format", format, "-o", tmp_path / f"dd.{format}"])
    assert_one_line_error(code, err)
    assert "cannot export the model" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd.edlz"]


def test_your_own_model_with_model_option(tmp_path):
    (tmp_path / "export_cli_net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width=16):\n"
        "        super().__init__()\n"
        "        self.fc1, self.fc2 = nn.Linear(784, width), nn.Linear(width, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc2(torch.relu(self.fc1(x.flatten(1))))\n\n"
        "def build(width=16):\n"
        "    return Net(width)\n")
    torch.manual_seed(0)
    from efficientdl.models.user import build_user_model

    model = build_user_model("export_cli_net:build", {"width": 24})
    model, _ = edl.compress.prune(model, sparsity=0.7)
    model, _ = edl.compress.share(model, bits=4)
    fmt.save(model, tmp_path / "net.edlz")
    argv = ["export", tmp_path / "net.edlz", "--format", "pt2", "-o", tmp_path / "net.pt2", "--input-shape", "1,28,28"]
    code, _, err = run_quiet(argv)                                    # the file never imports code on its own
    assert_one_line_error(code, err)
    assert "--model" in err and not (tmp_path / "net.pt2").exists()
    code, _, err = run_quiet([*argv, "--model", "export_cli_net:build"])
    assert code == 0, err
    x = _x(3)
    with torch.no_grad():
        expected = fmt.load(tmp_path / "net.edlz", model=type(model)(24))(x).numpy()
        y = torch.export.load(str(tmp_path / "net.pt2")).module()(x).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-7)
