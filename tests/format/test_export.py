"""Tests of :mod:`efficientdl.format.export`: each format checked by a runtime that is not ours
(onnxruntime for ONNX, ``safetensors.torch.load_file`` + ``load_state_dict`` into a freshly built
registry model, ``torch.export.load``) against the model :func:`efficientdl.format.load` decodes,
and the compressed form against the compressed model in memory before it was saved.

Models: LeNet-300-100 (every weight pruned and weight-shared), LeNet-5 (convolutions pruned only:
masks; fully connected layers shared) and MobileNetV2 at width 0.25 (depthwise convolutions,
BatchNorm with non-trivial statistics), each pruned then shared with :mod:`efficientdl.compress`."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import efficientdl as edl
from efficientdl import format as fmt
from efficientdl import models
from efficientdl.core.parametrize import plain_state_dict
from efficientdl.core.state import shared_weight, weight_mask
from efficientdl.errors import DependencyError, FormatError, ModelError
from efficientdl.format import export as ex

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {
    "lenet300": dict(kwargs={}, sparsity={"fc1": 0.92, "fc2": 0.9, "fc3": 0.7}, bits={"Linear": 4}),
    "lenet5": dict(kwargs={}, sparsity=0.8, bits={"Linear": 4}),                 # convolutions: masks only
    "mobilenetv2": dict(kwargs={"width": 0.25}, sparsity=0.6, bits={"Conv2d": 5, "Linear": 4}),
}


def _randomize_batchnorm(model, generator):
    """Statistics and affine parameters far from the identity, so BatchNorm matters in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / m.weight[0].numel()) ** 0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name → (path of the .edlz, the compressed model in memory)."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for i, (name, spec) in enumerate(SPECS.items()):
        torch.manual_seed(i)
        model = models.create(name, **spec["kwargs"])
        _randomize_batchnorm(model, torch.Generator().manual_seed(i))
        model.eval()
        model, _ = edl.compress.prune(model, sparsity=spec["sparsity"])
        model, _ = edl.compress.share(model, bits=spec["bits"])
        path = folder / f"{name}.edlz"
        fmt.save(model, path, meta={"input_shape": [1, 28, 28]} if name == "mobilenetv2" else None)
        out[name] = (path, model)
    return out


def _inputs(batch, seed=1):
    return torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def _reference(path, x):
    with torch.no_grad():
        return fmt.load(path)(x).numpy()


def _assert_close_relative(actual, expected, rtol=1e-4):
    """Within ``rtol`` of the largest output magnitude (outputs near zero compare on that scale)."""
    scale = float(np.abs(expected).max())
    assert scale > 1e-3                           # the outputs are not trivially tiny
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def test_the_files_hold_every_compressed_kind(files):
    kinds = {name: {r["kind"] for r in fmt.read(path).header["tensors"]} for name, (path, _) in files.items()}
    assert "shared" in kinds["lenet300"] and "sparse" not in kinds["lenet300"]
    assert {"sparse", "shared"} <= kinds["lenet5"]
    assert kinds["mobilenetv2"] & {"shared", "codes"}


# --------------------------------------------------------------------------- onnx
@pytest.mark.parametrize("name", list(SPECS))
def test_onnx_matches_torch_under_onnxruntime(files, tmp_path, name):
    path, _ = files[name]
    out = tmp_path / f"{name}.onnx"
    result = ex.export(path, out, "onnx")
    assert result.size_bytes == out.stat().st_size and result.input_shape == [1, 28, 28]
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    (inp,), (output,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and output.name == "output"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 1, 28, 28]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["edl.arch"]) == fmt.read(path).header["arch"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (5, 1):                         # the batch dimension is dynamic, not the traced 2
        x = _inputs(batch)
        (y,) = session.run(None, {"input": x.numpy()})
        assert y.shape == (batch, 10)
        _assert_close_relative(y, _reference(path, x))


# --------------------------------------------------------------------------- pt2
@pytest.mark.parametrize("name", list(SPECS))
def test_pt2_loads_with_torch_export_and_gives_the_same_outputs(files, tmp_path, name):
    path, _ = files[name]
    out = tmp_path / f"{name}.pt2"
    ex.export(path, out, "pt2")
    extra = {"efficientdl.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(json.loads(extra["efficientdl.json"])["edl.arch"])["name"] == name
    module = program.module()
    for batch in (3, 1):
        x = _inputs(batch, seed=2)
        with torch.no_grad():
            y = module(x).numpy()
        np.testing.assert_allclose(y, _reference(path, x), rtol=1e-5, atol=1e-6 * float(np.abs(y).max()))


# --------------------------------------------------------------------------- safetensors
@pytest.mark.parametrize("name", list(SPECS))
def test_safetensors_dense_weights_load_into_a_fresh_model(files, tmp_path, name):
    path, compressed = files[name]
    out = tmp_path / f"{name}.safetensors"
    ex.export(path, out, "safetensors")
    tensors = safetensors_torch.load_file(str(out))
    dense = {k: v for k, v in tensors.items() if "::" not in k}
    fresh = models.create(name, **SPECS[name]["kwargs"])          # built independently of format.load
    fresh.load_state_dict(dense, strict=True)
    fresh.eval()
    x = _inputs(4, seed=3)
    with torch.no_grad():
        assert torch.equal(fresh(x), fmt.load(path)(x))
    # the dense weights are the compressed model's effective weights, bit for bit
    expected = plain_state_dict(compressed)
    assert set(dense) == set(expected)
    for key, value in expected.items():
        assert torch.equal(dense[key], value), key


@pytest.mark.parametrize("name", list(SPECS))
def test_safetensors_compressed_form_rebuilds_the_weights(files, tmp_path, name):
    path, compressed = files[name]
    out = tmp_path / f"{name}.safetensors"
    ex.export(path, out, "safetensors")
    tensors = safetensors_torch.load_file(str(out))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    kinds = json.loads(metadata["edl.tensors"])
    assert json.loads(metadata["edl.arch"])["name"] == name
    records = {r["name"]: r for r in fmt.read(path).header["tensors"]}
    assert {k: v["kind"] for k, v in kinds.items()} == {k: r["kind"] for k, r in records.items()}
    modules = dict(compressed.named_modules())
    shared = sparse = 0
    for key, rec in records.items():
        module_name, _, attr = key.rpartition(".")
        weight = tensors[key]
        if rec["kind"] in ("shared", "codes"):
            shared += 1
            bits = rec["weight_bits"]
            assert kinds[key]["weight_bits"] == bits
            codebook, indices = tensors[f"{key}::codebook"], tensors[f"{key}::indices"]
            assert indices.dtype == (torch.uint8 if bits <= 8 else torch.int16)
            assert indices.shape == weight.shape and codebook.shape == (2 ** bits,)
            assert codebook[0] == 0
            assert torch.equal(codebook[indices.long()], weight)
            # the codes are those of the weight-sharing parametrization in memory
            sw = shared_weight(modules[module_name], attr)
            assert torch.equal(indices.long().flatten(), sw.indices.flatten().long())
            assert f"{key}::mask" not in tensors
        elif rec["kind"] == "sparse":
            sparse += 1
            mask = tensors[f"{key}::mask"]
            assert mask.dtype == torch.bool and mask.shape == weight.shape
            pruned = weight_mask(modules[module_name], attr)
            if pruned is None:    # a small weight-shared kernel the file stores sparse (no codebook): its codes
                pruned = shared_weight(modules[module_name], attr).indices.reshape(weight.shape) != 0
            assert torch.equal(mask, pruned.bool())             # the pruning mask in memory
            assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
        else:
            assert not [k for k in tensors if k.startswith(f"{key}::")]
    assert shared > 0
    if name == "lenet300":
        assert sparse == 0
    if name == "lenet5":
        assert sparse == 2          # conv1, conv2


# --------------------------------------------------------------------------- errors
class DataDependent(nn.Module):
    """A branch on the values of the input: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.edl_arch = {"name": "none", "kwargs": {"input_size": 2, "in_channels": 1}}

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_a_model_that_cannot_be_traced_is_one_line_and_writes_nothing(tmp_path, format):
    out = tmp_path / f"model.{format}"
    out.write_bytes(b"previous")
    with pytest.raises(ModelError) as info:
        ex.export_model(DataDependent(), out, format)
    message = str(info.value)
    assert "\n" not in message and "cannot export the model" in message and "torch.export" in message
    assert out.read_bytes() == b"previous"                   # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]   # no temporary file left


def test_no_input_shape_known_asks_for_one(tmp_path):
    model = models.create("mobilenetv2", width=0.25)          # records no input_size
    with pytest.raises(ModelError, match="--input-shape"):
        ex.export_model(model, tmp_path / "m.pt2", "pt2")
    assert list(tmp_path.iterdir()) == []
    assert ex.example_input_shape(model, None, (3, 32, 32)) == (3, 32, 32)
    with pytest.raises(ModelError):
        ex.example_input_shape(model, None, (3, 0))


def test_an_explicit_input_shape_wins(files, tmp_path):
    path, _ = files["lenet300"]
    header = fmt.read(path).header
    assert ex.example_input_shape(None, header) == (1, 28, 28)          # from the architecture record
    assert ex.example_input_shape(None, {"meta": {"input_shape": [1, 7, 112]}, "arch": header["arch"]}) \
        == (1, 7, 112)                                                    # meta first
    result = ex.export(path, tmp_path / "l.pt2", "pt2", input_shape=(1, 14, 56))   # same 784 features
    assert result.input_shape == [1, 14, 56]
    module = torch.export.load(str(tmp_path / "l.pt2")).module()
    x = torch.randn(2, 1, 14, 56)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), fmt.load(path)(x).numpy(), rtol=1e-5, atol=1e-7)


def test_unknown_format_and_missing_package(files, tmp_path, monkeypatch):
    path, _ = files["lenet300"]
    with pytest.raises(ModelError, match="unknown export format"):
        ex.export(path, tmp_path / "x.tflite", "tflite")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert ex.missing_package("onnx") == "onnx" and ex.missing_package("pt2") is None
    with pytest.raises(DependencyError, match=r"needs the 'onnx' package \(pip install 'efficientdl\[export\]'\)"):
        ex.export(path, tmp_path / "x.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_and_unwritable_output(files, tmp_path):
    bad = tmp_path / "bad.edlz"
    data = bytearray(files["lenet300"][0].read_bytes())
    data[-10:] = b"\xff" * 10
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        ex.export(bad, tmp_path / "o.safetensors", "safetensors")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(FormatError, match="cannot write"):
        ex.export(files["lenet300"][0], blocker / "o.safetensors", "safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "bad.edlz"]


def test_output_gets_the_permissions_of_a_plain_open(files, tmp_path):
    old = os.umask(0o027)
    try:
        ex.export(files["lenet300"][0], tmp_path / "o.safetensors", "safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "o.safetensors").stat().st_mode & 0o777 == 0o640
