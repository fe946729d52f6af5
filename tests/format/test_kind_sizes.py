"""No tensor is stored larger than its dense fp32 form or its plain sparse form
(:func:`efficientdl.format.kinds.encode_tensor`), and every fallback decodes bit for bit to
the values the preferred kind would have decoded to.

The sizes are computed here by hand: a dense float32 tensor takes ``4 · numel`` bytes, a
``b``-bit codebook ``4 · (2^b − 1)`` bytes, fixed-width codes ``ceil(numel · b / 8)``."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from efficientdl import format as fmt
from efficientdl.compress.pruning.prune import apply_mask
from efficientdl.compress.quantization.share import SharedWeight, share_layer


def _shared_layer(module, bits, seed, keep=1.0):
    """Attach a ``bits``-bit codebook of random centroids to ``module.weight`` (indices drawn at
    random, a fraction ``keep`` nonzero); return the weight's values computed by hand, C[I]."""
    rng = np.random.default_rng(seed)
    shape = tuple(module.weight.shape)
    k = (1 << bits) - 1
    centroids = rng.normal(0, 0.1, k).astype(np.float32)
    centroids[centroids == 0] = 0.5
    idx = np.where(rng.random(shape) < keep, rng.integers(1, k + 1, shape), 0)
    sw = SharedWeight(torch.from_numpy(centroids), torch.from_numpy(idx), bits)
    parametrize.register_parametrization(module, "weight", sw, unsafe=True)
    return np.concatenate([[0], centroids]).astype(np.float32)[idx]


def _records(data):
    return {r["name"]: r for r in fmt.decode(data).header["tensors"]}


def _plain_file_bytes(model):
    """The file of ``model`` with every tensor plain dense: its values, no codebook, no inference."""
    plain = {k: v.detach().clone() for k, v in model.state_dict().items() if "parametrizations" not in k}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            plain[f"{name}.weight" if name else "weight"] = module.weight.detach().clone()
    holder = nn.Module()
    for key, value in plain.items():
        holder.register_buffer(key.replace(".", "_"), value)
    return fmt.encode(holder, infer_shared=False)[0], plain


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_a_tiny_8_bit_depthwise_kernel_is_not_stored_larger_than_dense(coding):
    """288 weights (1,152 fp32 bytes) with 8-bit sharing: as codes they would take 288 bytes of
    codes plus 1,020 bytes of codebook (1,308); stored plain instead, with the same values."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, groups=32, bias=False)          # 288 weights: 1,152 fp32 bytes
    expected = _shared_layer(conv, 8, seed=1)
    numel = expected.size

    data, layers = fmt.encode(conv, coding=coding)
    layer = {r.name: r for r in layers}["weight"]
    assert layer.size_bytes <= 4 * numel                         # never larger than dense fp32
    assert layer.kind in ("dense", "sparse")
    c = fmt.decode(data)
    got = c.tensors["weight"].numpy()
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()   # bit for bit
    # the whole file is no larger than the same values written as a plain dense tensor
    plain_data, _ = _plain_file_bytes(conv)
    assert len(data) <= len(plain_data)


def test_the_same_layout_asked_for_explicitly_is_kept():
    conv = nn.Conv2d(32, 32, 3, groups=32, bias=False)
    expected = _shared_layer(conv, 8, seed=2)
    data, layers = fmt.encode(conv, coding="fixed", shared_layout="codes")
    layer = {r.name: r for r in layers}["weight"]
    assert layer.kind == "codes"
    assert layer.size_bytes == math.ceil(expected.size * 8 / 8) + 4 * 255     # 288 codes + 255 centroids
    assert fmt.decode(data).tensors["weight"].numpy().tobytes() == expected.tobytes()


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_a_large_weight_shared_tensor_still_uses_its_codes(coding):
    fc = nn.Linear(256, 64)                                      # 16,384 weights
    expected = _shared_layer(fc, 8, seed=3)
    data, layers = fmt.encode(fc, coding=coding)
    layer = {r.name: r for r in layers}["weight"]
    assert layer.kind == "codes" and layer.weight_bits == 8
    if coding == "fixed":
        assert layer.size_bytes == expected.size + 4 * 255
    c = fmt.decode(data)
    assert c.tensors["weight"].numpy().tobytes() == expected.tobytes()
    assert "weight" in c.codebooks                               # the runtime still gets its codebook


def test_a_small_pruned_shared_tensor_falls_back_to_the_plain_sparse_form():
    """A 4-bit conv1 of LeNet-5 size, half pruned: fp32 values with a relative index beat the
    codes and their codebook; the values are kept exactly."""
    conv = nn.Conv2d(1, 20, 5, bias=False)                       # 500 weights
    expected = _shared_layer(conv, 8, seed=4, keep=0.1)
    data, layers = fmt.encode(conv, coding="huffman")
    layer = {r.name: r for r in layers}["weight"]
    nnz = int(np.count_nonzero(expected))
    assert layer.kind == "sparse" and layer.nonzero == nnz
    assert layer.size_bytes < min(4 * expected.size, 4 * 255)    # smaller than dense and than the codebook alone
    assert fmt.decode(data).tensors["weight"].numpy().tobytes() == expected.tobytes()


def test_a_tiny_pruned_tensor_is_not_stored_larger_than_dense():
    """A masked 2×4 weight whose last element is pruned: the sparse form needs 7 values and a
    closing filler (8 · 4 bytes) plus its index, more than the 32 dense bytes: stored dense."""
    fc = nn.Linear(4, 2)
    w = np.array([[0.5, -0.25, 0.125, 0.75], [-1.0, 0.375, -0.5, 0]], np.float32)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(w))
    apply_mask(fc, torch.from_numpy(w != 0))
    for coding in ("huffman", "fixed"):
        data, layers = fmt.encode(fc, coding=coding, infer_shared=False)
        layer = {r.name: r for r in layers}["weight"]
        assert layer.kind == "dense" and layer.size_bytes == 4 * w.size
        assert _records(data)["weight"]["kind"] == "dense"
        assert fmt.decode(data).tensors["weight"].numpy().tobytes() == w.tobytes()
    # pruned further, the sparse form wins again: 3 values and a closing filler, 16 bytes of values
    w2 = np.where(np.arange(8).reshape(2, 4) % 3 == 0, w, 0).astype(np.float32)
    w2[1, 3] = 0
    with torch.no_grad():
        fc.parametrizations.weight.original.copy_(torch.from_numpy(w2))
    fc.parametrizations.weight[0].mask.copy_(torch.from_numpy(w2 != 0))
    data, layers = fmt.encode(fc, coding="fixed", infer_shared=False)
    layer = {r.name: r for r in layers}["weight"]
    assert layer.kind == "sparse" and layer.size_bytes < 4 * w2.size
    assert fmt.decode(data).tensors["weight"].numpy().tobytes() == w2.tobytes()


def _plain_sparse_bytes_fixed(values, index_bits):
    """Bytes of the ``sparse`` form with fixed-width fields, by the paper's rule: an entry per
    nonzero, a filler per ``2^b`` zeros in a row, a closing entry at the last position."""
    pos = np.flatnonzero(values.reshape(-1))
    if pos.size == 0 or pos[-1] != values.size - 1:
        pos = np.append(pos, values.size - 1)
    gaps = np.diff(pos, prepend=-1) - 1
    entries = pos.size + int(np.sum(gaps >> index_bits))
    return 4 * entries + math.ceil(entries * index_bits / 8)


def test_every_weight_of_a_mixed_model_is_at_most_its_dense_and_plain_sparse_size():
    """k-means shared layers (the method itself) of several sizes, pruned and not."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 24 * 24, 40),
                          nn.Linear(40, 10))
    apply_mask(model[3], torch.rand(model[3].weight.shape) < 0.1)
    apply_mask(model[4], torch.rand(model[4].weight.shape) < 0.5)
    for module, bits in ((model[0], 8), (model[1], 8), (model[3], 5), (model[4], 5)):
        share_layer(module, bits)
    expected = {f"{i}.weight": model[i].weight.detach().clone().numpy() for i in (0, 1, 3, 4)}
    index_bits = {"0.weight": 8, "1.weight": 8, "3.weight": 5, "4.weight": 5}
    for coding in ("huffman", "fixed"):
        data, layers = fmt.encode(model, coding=coding)
        c = fmt.decode(data)
        for r in layers:
            assert r.size_bytes <= 4 * r.weights, r
            if r.name in expected:
                assert c.tensors[r.name].numpy().tobytes() == expected[r.name].tobytes(), r.name
                if coding == "fixed":
                    assert r.size_bytes <= _plain_sparse_bytes_fixed(expected[r.name], index_bits[r.name]), r
        kinds = {r.name: r.kind for r in layers}
        assert kinds["3.weight"] == "shared"                      # the big pruned fc layer keeps its codebook
        assert kinds["1.weight"] in ("dense", "sparse")           # 72 weights cannot carry 255 centroids
