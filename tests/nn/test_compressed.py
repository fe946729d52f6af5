"""Runtime layers against torch's dense layers, and the compressed runtime of a decoded file."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl import format as fmt
from efficientdl.compress.pruning.prune import apply_mask, magnitude_mask
from efficientdl.compress.quantization.share import share_layer
from efficientdl.errors import ModelError
from efficientdl.nn import CompressedConv2d, CompressedLinear, CompressedWeight, to_runtime
from efficientdl.nn.dispatch import kernel_names


def codes_and_codebook(shape, density, bits=4, seed=0):
    rng = np.random.default_rng(seed)
    k = (1 << bits) - 1
    codes = np.where(rng.random(shape) < density, rng.integers(1, k + 1, shape), 0)
    codebook = np.concatenate([[0.0], rng.normal(size=k)]).astype(np.float32)
    return codes, codebook


@pytest.mark.parametrize("batch", [(), (1,), (5,), (64,), (2, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_f_linear(batch, with_bias):
    codes, codebook = codes_and_codebook((30, 50), 0.2)
    bias = torch.randn(30) if with_bias else None
    layer = CompressedLinear(codes, codebook, bias, partitions=2)
    x = torch.relu(torch.randn(*batch, 50))
    w = torch.from_numpy(codebook[codes])
    torch.testing.assert_close(layer(x), F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.dense_weight(), w)
    assert not any(p.numel() == 30 * 50 for p in layer.buffers())   # no dense matrix is held


def test_linear_accepts_non_contiguous_and_float64_input():
    codes, codebook = codes_and_codebook((8, 6), 0.5)
    layer = CompressedLinear(codes, codebook)
    x = torch.randn(6, 4, dtype=torch.float64).t()                  # non-contiguous (4, 6)
    w = torch.from_numpy(codebook[codes]).double()
    torch.testing.assert_close(layer(x), x @ w.t())
    # one sample takes the short path: non-contiguous float64 input, float32 bias
    bias = torch.randn(8)
    layer = CompressedLinear(codes, codebook, bias)
    one = torch.randn(6, 1, dtype=torch.float64).t()
    torch.testing.assert_close(layer(one), one @ w.t() + bias.double())
    layer.load_state_dict({**layer.state_dict(), "bias": 2 * bias})  # a new bias is seen
    torch.testing.assert_close(layer(one), one @ w.t() + 2 * bias.double())


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (0, 1), 1)])
@pytest.mark.parametrize("n", [1, 3])
def test_conv_matches_f_conv2d(stride, padding, dilation, n):
    codes, codebook = codes_and_codebook((6, 3, 3, 3), 0.4, bits=5, seed=2)
    bias = torch.randn(6)
    layer = CompressedConv2d(codes, codebook, bias, stride, padding, dilation)
    x = torch.relu(torch.randn(n, 3, 11, 9))
    w = torch.from_numpy(codebook[codes])
    expected = F.conv2d(x, w, bias, stride, padding, dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0]), expected[0], rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_model_error():
    layer = CompressedLinear(*codes_and_codebook((4, 5), 0.5))
    with pytest.raises(ModelError, match="expects"):
        layer(torch.randn(2, 6))
    with pytest.raises(ModelError, match="float32 or float64"):
        layer(torch.ones(2, 5, dtype=torch.int32))
    conv = CompressedConv2d(*codes_and_codebook((2, 3, 3, 3), 0.5))
    with pytest.raises(ModelError, match="expects"):
        conv(torch.randn(1, 2, 8, 8))
    with pytest.raises(ModelError, match="smaller than"):
        conv(torch.randn(1, 3, 2, 2))
    with pytest.raises(ModelError, match="bias shape"):
        CompressedLinear(*codes_and_codebook((4, 5), 0.5), bias=torch.zeros(3))
    with pytest.raises(ModelError, match="groups=1"):
        CompressedConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), *codes_and_codebook((4, 2, 3, 3), 0.5))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, groups=2), nn.ReLU())
        self.fc1 = nn.Linear(8 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def compressed_net(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    for layer, sparsity, bits in [(model.features[0], 0.3, 2), (model.features[3], 0.5, 4),
                                  (model.fc1, 0.9, 4), (model.fc2, 0.7, 5)]:
        apply_mask(layer, magnitude_mask(layer.weight, sparsity))
        share_layer(layer, bits=bits)
    path = tmp_path / "net.edlz"
    kinds = {r.name: r.kind for r in fmt.save(model, path)}
    # 2 bits keep the 72-weight kernel's codebook smaller than its plain sparse form, so it stays coded
    assert kinds["features.0.weight"] in ("shared", "codes")
    return path


def test_compressed_runtime_equals_dense_decoded_model(tmp_path):
    path = compressed_net(tmp_path)
    dense = fmt.load(path, model=Net())
    fast = fmt.load(path, model=Net(), runtime="compressed", cache=False)
    assert type(fast.features[0]) is nn.Conv2d and type(fast.fc1) is nn.Linear     # the modules stay
    assert isinstance(fast.features[0].weight, CompressedWeight) and isinstance(fast.fc1.weight, CompressedWeight)
    assert isinstance(fast.features[3].weight, CompressedWeight)                  # grouped: held, served dense
    report = fast.edl_runtime
    assert report.compressed == ["features.0.weight", "features.3.weight", "fc1.weight", "fc2.weight"]
    x = torch.relu(torch.randn(7, 1, 12, 12))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), dense(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x[:1]), dense(x[:1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(report.weights["fc1.weight"].dense(), dense.fc1.weight.detach())
    assert report.fallbacks() == {}
    rows = {r["name"]: r for r in report.layers()}
    fc1 = report.weights["fc1.weight"]
    assert rows["fc1.weight"]["dense_bytes"] == 4 * 40 * 128
    m, twin = fc1.matrix, fc1.twin
    assert fc1.packed_bytes() == (m.entries.nbytes + m.colptr.nbytes + m.row_start.nbytes
                                                  + m.codebook.nbytes + twin.entries.nbytes + twin.colptr.nbytes
                                                  + twin.row_start.nbytes + twin.codebook.nbytes)
    # the first call settled the model: each weight is held compressed, or dense where dense won
    held = {r["name"]: r["held"] for r in rows.values()}
    assert set(report.served_compressed()) == {n for n, h in held.items() if h == "compressed"}
    assert (rows["fc1.weight"]["packed_bytes"], rows["fc1.weight"]["decoded_bytes"]) in (
        (fc1.packed_bytes(), fc1.decoded_bytes()), (0, 4 * 40 * 128))
    assert report.settled["decision"] in ("compressed", "dense")
    chosen = {r["choices"][k]["kernel"] for r in rows.values() for k in r["choices"]}
    assert chosen <= set(kernel_names("linear") + kernel_names("conv2d"))


def test_runtime_name_is_checked(tmp_path):
    with pytest.raises(ModelError, match="runtime"):
        fmt.load(compressed_net(tmp_path), model=Net(), runtime="sparse")


def test_to_runtime_skips_tensors_it_cannot_place():
    model = nn.Sequential(nn.Linear(4, 3))
    codes, codebook = codes_and_codebook((3, 4), 0.5)
    to_runtime(model, {"0.weight": (codes, codebook), "0.bias": (codes[0], codebook),
                       "missing.weight": (codes, codebook)}, cache=False)
    report = model.edl_runtime
    assert report.compressed == ["0.weight"]
    assert set(report.dense) == {"0.bias", "missing.weight"}
    assert "1-D" in report.dense["0.bias"] and "not a parameter" in report.dense["missing.weight"]


def test_module_conversions_keep_the_layer_working():
    codes, codebook = codes_and_codebook((12, 20), 0.3)
    layer = CompressedLinear(codes, codebook, torch.randn(12))
    x = torch.relu(torch.randn(3, 20))
    expected = layer(x)
    layer = layer.double()                       # buffers converted: cached kernel views are rebuilt
    assert layer.codebook.dtype == torch.float64
    torch.testing.assert_close(layer(x.double()), expected.double(), rtol=1e-5, atol=1e-5)
    state = layer.state_dict()
    assert set(state) == {"row_start", "colptr", "entries", "codebook", "rowptr", "row_entries", "bias"}


def test_int8_precision_from_a_file_and_its_misuse(tmp_path):
    path = compressed_net(tmp_path)
    dense = fmt.load(path, model=Net())
    int8 = fmt.load(path, model=Net(), runtime="compressed", cache=False, precision="int8")
    assert int8.edl_runtime.precision == "int8"
    x = torch.relu(torch.randn(3, 1, 12, 12))
    with torch.no_grad():
        y, exact = int8(x), dense(x)
    assert float((y - exact).abs().max() / exact.abs().max()) < 0.05
    with pytest.raises(ModelError, match="precision='int8' needs runtime='compressed'"):
        fmt.load(path, model=Net(), precision="int8")
    with pytest.raises(ModelError, match="precision must be one of fp32, int8"):
        fmt.load(path, model=Net(), runtime="compressed", cache=False, precision="fp16")
