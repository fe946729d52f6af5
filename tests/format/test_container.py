"""Tests of the compressed file: bit-exact round trips, hand-computed sizes, and that every
damaged or foreign input ends in a FormatError."""

import json
import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from efficientdl import format as fmt
from efficientdl.compress.pruning.prune import apply_mask, magnitude_mask
from efficientdl.compress.quantization.share import SharedWeight, share_layer
from efficientdl.errors import FormatError, ModelError

PREFIX = struct.Struct("<4sHHII")  # magic, version, reserved, header_len, header_crc (the documented layout)


class Mixed(nn.Module):
    """conv (shared) -> bn (buffers) -> fc1 (sparse, masked) -> fc2 (dense, unpruned)."""

    def __init__(self, out=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, out)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def make_mixed(seed=0):
    torch.manual_seed(seed)
    model = Mixed()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics and num_batches_tracked become nontrivial
            model(torch.randn(16, 1, 8, 8))
    apply_mask(model.conv, magnitude_mask(model.conv.weight, 0.4))
    share_layer(model.conv, bits=3)
    apply_mask(model.fc1, magnitude_mask(model.fc1.weight, 0.8))
    return model.eval()


def expected_tensors(model):
    """Effective tensors by plain state-dict name, gathered by hand from the modules."""
    out = {}
    for mname in ("conv", "fc1", "fc2"):
        m = getattr(model, mname)
        out[f"{mname}.weight"] = m.weight.detach()
        out[f"{mname}.bias"] = m.bias.detach()
    bn = model.bn
    out.update({"bn.weight": bn.weight.detach(), "bn.bias": bn.bias.detach(), "bn.running_mean": bn.running_mean,
                "bn.running_var": bn.running_var, "bn.num_batches_tracked": bn.num_batches_tracked})
    return out


@pytest.fixture(scope="module")
def mixed():
    return make_mixed()


@pytest.fixture(scope="module", params=["huffman", "fixed"])
def encoded(request, mixed):
    data, layers = fmt.encode(mixed, arch=None, coding=request.param, shared_layout="sparse")
    return data, layers, request.param


def sections_of(data):
    """(absolute offset, length) of every section, from the documented layout."""
    _, _, _, header_len, _ = PREFIX.unpack_from(data)
    header = json.loads(zlib.decompress(data[16:16 + header_len]))
    base = 16 + header_len
    return header, base, [(base + off, length) for rec in header["tensors"] for off, length, _ in rec["sections"].values()]


# --------------------------------------------------------------------------- round trip
def test_round_trip_is_bit_exact(mixed, encoded):
    data, layers, coding = encoded
    c = fmt.decode(data)
    expected = expected_tensors(mixed)
    assert set(c.tensors) == set(expected)
    for name, t in expected.items():
        assert c.tensors[name].dtype == t.dtype, name
        assert torch.equal(c.tensors[name], t), name
    kinds = {rec["name"]: rec["kind"] for rec in c.header["tensors"]}
    assert kinds["conv.weight"] == "shared" and kinds["fc1.weight"] == "sparse" and kinds["fc2.weight"] == "dense"
    assert kinds["bn.running_mean"] == "dense" and kinds["bn.num_batches_tracked"] == "dense"
    assert c.header["arch"] is None and c.size_bytes == len(data)
    # the decoded codebook reproduces the parametrization's indices and centroids
    sw = mixed.conv.parametrizations.weight[0]
    idx, codebook = c.codebooks["conv.weight"]
    np.testing.assert_array_equal(idx, sw.indices.numpy())
    np.testing.assert_array_equal(codebook[1:], sw.centroids.detach().numpy())
    # the encoder's size records add up to the sections in the file
    _, base, secs = sections_of(data)
    assert sum(layer.size_bytes for layer in layers) == sum(n for _, n in secs) == len(data) - base


def test_load_into_fresh_model(mixed, encoded):
    data, _, _ = encoded
    fresh = Mixed()
    fmt.load_into(fresh, fmt.decode(data))
    for name, t in expected_tensors(mixed).items():
        assert torch.equal(fresh.state_dict()[name], t), name
    fresh.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), mixed(x), rtol=0, atol=0)


def test_save_load_from_path(mixed, tmp_path):
    path = tmp_path / "m.edlz"
    fmt.save(mixed, path, coding="huffman")
    assert [p.name for p in tmp_path.iterdir()] == ["m.edlz"]
    fresh = fmt.load(path, model=Mixed())
    assert torch.equal(fresh.fc1.weight, mixed.fc1.weight.detach())
    info = fmt.info(path)
    assert info["size_bytes"] == path.stat().st_size
    n_float = sum(t.numel() for n, t in expected_tensors(mixed).items() if t.dtype.is_floating_point)
    assert info["original_bytes"] == 4 * n_float
    with pytest.raises(ModelError):  # no architecture recorded and no model given
        fmt.load(path)


def test_load_into_mismatches_raise_model_error(encoded):
    data, _, _ = encoded
    c = fmt.decode(data)
    wrong = Mixed(out=11)
    with pytest.raises(ModelError, match=r"fc2\.weight"):
        fmt.load_into(wrong, c)

    class Extra(Mixed):
        def __init__(self):
            super().__init__()
            self.fc3 = nn.Linear(10, 2)

    with pytest.raises(ModelError, match=r"fc3\.weight"):
        fmt.load_into(Extra(), c)

    class Fewer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

    with pytest.raises(ModelError, match="no counterpart"):
        fmt.load_into(Fewer(), c)
    with pytest.raises(ModelError):
        fmt.load_into(make_mixed(), c)  # a parametrized model


# --------------------------------------------------------------------------- sizes by hand
def test_fixed_coding_shared_layer_size_by_hand():
    layer = nn.Linear(10, 4)  # 40 weights
    b, ib = 2, 3
    centroids = torch.tensor([-0.5, 0.25, 1.0])
    idx = torch.zeros(40, dtype=torch.int64)
    idx[[0, 3, 20, 39]] = torch.tensor([1, 3, 2, 1])
    parametrize.register_parametrization(layer, "weight", SharedWeight(centroids, idx.view(4, 10), b), unsafe=True)
    layer.parametrizations.weight.original.requires_grad_(False)
    # zeros skipped before positions 0, 3, 20, 39: 0, 2, 16, 18; each run of 8 needs a filler (3 bits: z <= 7)
    # → entries at 0, 3, 11, 19, 20, 28, 36, 39: 8 entries
    entries = 8
    hand = math.ceil(entries * b / 8) + math.ceil(entries * ib / 8) + 4 * (2 ** b - 1)
    assert hand == 2 + 3 + 12
    data, layers = fmt.encode(layer, index_bits=ib, coding="fixed")
    rec = {r.name: r for r in layers}["weight"]
    assert rec.kind == "shared" and rec.entries == entries and rec.size_bytes == hand
    header, _, _ = sections_of(data)
    weight = [r for r in header["tensors"] if r["name"] == "weight"][0]
    assert {k: v[1] for k, v in weight["sections"].items()} == {"index": 3, "values": 2, "codebook": 12}
    decoded = fmt.decode(data).tensors["weight"].ravel()
    expected = torch.zeros(40)
    expected[[0, 3, 20, 39]] = torch.tensor([-0.5, 1.0, 0.25, -0.5])
    assert torch.equal(decoded, expected)


# --------------------------------------------------------------------------- damaged input
def assert_format_error(data):
    with pytest.raises(FormatError) as info:
        fmt.decode(bytes(data), "damaged.edlz")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("damaged.edlz")


def test_flip_any_byte_of_prefix_and_header(encoded):
    data, _, _ = encoded
    _, base, _ = sections_of(data)
    for off in range(base):
        for mask in (0x01, 0xFF):
            b = bytearray(data)
            b[off] ^= mask
            assert_format_error(b)


def test_flip_bytes_in_every_section(encoded):
    data, _, _ = encoded
    _, _, secs = sections_of(data)
    assert len(secs) >= 10
    for start, length in secs:
        if length == 0:
            continue
        for off in sorted({start, start + length // 2, start + length - 1}):
            b = bytearray(data)
            b[off] ^= 0x10
            assert_format_error(b)


def test_flip_bytes_across_the_blob(encoded):
    data, _, _ = encoded
    _, base, _ = sections_of(data)
    for off in range(base, len(data), max(1, (len(data) - base) // 150)):
        b = bytearray(data)
        b[off] = (b[off] + 1) % 256
        assert_format_error(b)


def test_truncation_at_many_lengths(encoded):
    data, _, _ = encoded
    lengths = set(range(0, 40)) | set(range(0, len(data), max(1, len(data) // 200))) | {len(data) - 1}
    for n in sorted(lengths):
        assert_format_error(data[:n])


@pytest.mark.parametrize("tail", [b"\x00", b"garbage", bytes(1000)])
def test_appended_garbage(encoded, tail):
    assert_format_error(encoded[0] + tail)


def test_wrong_magic_and_version(encoded):
    data, _, _ = encoded
    assert_format_error(b"PK\x03\x04" + data[4:])
    assert_format_error(b"edlz" + data[4:])
    for version in (0, 2, 0xFFFF):
        b = bytearray(data)
        struct.pack_into("<H", b, 4, version)
        assert_format_error(b)
    assert_format_error(b"")
    assert_format_error(b"EDLZ")


def test_bad_paths(tmp_path, encoded):
    with pytest.raises(FormatError):
        fmt.read(tmp_path)  # a directory
    with pytest.raises(FormatError):
        fmt.read(tmp_path / "missing.edlz")
    empty = tmp_path / "empty.edlz"
    empty.write_bytes(b"")
    with pytest.raises(FormatError):
        fmt.read(empty)
    for call in (fmt.info, fmt.load):
        with pytest.raises(FormatError):
            call(tmp_path / "missing.edlz")
        with pytest.raises(FormatError):
            call(tmp_path)
    with pytest.raises(FormatError):
        fmt.save(make_mixed(), tmp_path)  # a directory as output path
    good = tmp_path / "good.edlz"
    good.write_bytes(encoded[0])
    assert fmt.read(good).size_bytes == len(encoded[0])


def reheader(data, mutate):
    """Re-encode the file with a mutated JSON header and a valid checksum (a crafted file)."""
    header, base, _ = sections_of(data)
    new = mutate(header)
    header = header if new is None else new
    raw = zlib.compress(json.dumps(header).encode())
    return PREFIX.pack(b"EDLZ", 1, 0, len(raw), zlib.crc32(raw)) + raw + data[base:]


def _t(name):
    return lambda h: next(r for r in h["tensors"] if r["name"] == name)


def _pop(mapping, key):
    """Remove a key in place (returns None, so reheader keeps the mutated header)."""
    del mapping[key]


CRAFTED = {
    "not a dict": lambda h: [1, 2],
    "no tensors": lambda h: {k: v for k, v in h.items() if k != "tensors"},
    "tensors not list": lambda h: {**h, "tensors": {"a": 1}},
    "record not dict": lambda h: {**h, "tensors": h["tensors"] + [7]},
    "sections list": lambda h: _t("fc2.bias")(h).update(sections=[[0, 1, 2]]),
    "sections missing": lambda h: _pop(_t("fc2.bias")(h), "sections"),
    "section short": lambda h: _t("fc2.bias")(h)["sections"].update(data=[0, 4]),
    "section floats": lambda h: _t("fc2.bias")(h)["sections"].update(data=[0.0, 4.0, 1]),
    "section negative": lambda h: _t("fc2.bias")(h)["sections"]["data"].__setitem__(0, -4),
    "section beyond": lambda h: _t("fc2.bias")(h)["sections"]["data"].__setitem__(0, 10 ** 9),
    "crc string": lambda h: _t("fc2.bias")(h)["sections"]["data"].__setitem__(2, "x"),
    "shape negative": lambda h: _t("fc2.bias")(h).update(shape=[-10]),
    "shape string": lambda h: _t("fc2.bias")(h).update(shape="10"),
    "shape huge": lambda h: _t("fc2.bias")(h).update(shape=[2 ** 31, 2 ** 31]),
    "shape wrong": lambda h: _t("fc2.bias")(h).update(shape=[11]),
    "dtype unknown": lambda h: _t("fc2.bias")(h).update(dtype="complex64"),
    "dtype int": lambda h: _t("fc2.bias")(h).update(dtype=3),
    "kind unknown": lambda h: _t("fc1.weight")(h).update(kind="magic"),
    "coding unknown": lambda h: _t("fc1.weight")(h).update(coding="lzma"),
    "index bits 0": lambda h: _t("fc1.weight")(h).update(index_bits=0),
    "index bits 9": lambda h: _t("fc1.weight")(h).update(index_bits=9),
    "index bits bool": lambda h: _t("fc1.weight")(h).update(index_bits=True),
    "entries huge": lambda h: _t("fc1.weight")(h).update(entries=10 ** 12),
    "entries fewer": lambda h: _t("fc1.weight")(h).update(entries=_t("fc1.weight")(h)["entries"] - 1),
    "entries zero": lambda h: _t("fc1.weight")(h).update(entries=0),
    "sparse as shared": lambda h: _t("fc1.weight")(h).update(kind="shared"),
    "shared as sparse": lambda h: _t("conv.weight")(h).update(kind="sparse"),
    "weight bits 0": lambda h: _t("conv.weight")(h).update(weight_bits=0),
    "weight bits 17": lambda h: _t("conv.weight")(h).update(weight_bits=17),
    "weight bits 2": lambda h: _t("conv.weight")(h).update(weight_bits=2),
    "shared float64": lambda h: _t("conv.weight")(h).update(dtype="float64"),
    "shape more": lambda h: _t("conv.weight")(h).update(shape=[4, 1, 3, 4]),
    "shape fewer": lambda h: _t("conv.weight")(h).update(shape=[4, 1, 3, 2]),
    "duplicate": lambda h: h["tensors"].append(dict(h["tensors"][-1])),
    "name missing": lambda h: _pop(h["tensors"][0], "name"),
    "format name": lambda h: h.update(format="other"),
    "nine dims": lambda h: _t("fc2.bias")(h).update(shape=[1] * 8 + [10]),
}


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_headers_raise_format_error(mixed, coding, case):
    data, _ = fmt.encode(mixed, coding=coding)
    fmt.decode(reheader(data, lambda h: None))  # the re-encoding itself is sound
    assert_format_error(reheader(data, CRAFTED[case]))


# --------------------------------------------------------------------------- atomic save
def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    model = make_mixed()
    target = tmp_path / "model.edlz"
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(FormatError, match="cannot write"):
        fmt.save(model, target)
    assert list(tmp_path.iterdir()) == []

    # an existing file is left as it was
    target.write_bytes(b"previous")
    with pytest.raises(FormatError, match="cannot write"):
        fmt.save(model, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.edlz"]

    # and the rename failing leaves nothing behind either
    monkeypatch.setattr(os, "fdopen", real_fdopen)

    def failing_replace(src, dst):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(FormatError, match="cannot write"):
        fmt.save(model, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.edlz"]


# --------------------------------------------------------------------------- property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 60), density=st.floats(0.0, 1.0),
    bits=st.integers(1, 8), index_bits=st.integers(1, 8), coding=st.sampled_from(["huffman", "fixed"]),
    shared=st.booleans(), seed=st.integers(0, 2 ** 31 - 1),
)
def test_random_sparse_matrices_round_trip(rows, cols, density, bits, index_bits, coding, shared, seed):
    rng = np.random.default_rng(seed)
    layer = nn.Linear(cols, rows)
    keep = rng.random((rows, cols)) < density
    if shared:
        k = (1 << bits) - 1
        centroids = rng.normal(0, 1, k).astype(np.float32)
        centroids[centroids == 0] = 1.0
        idx = np.where(keep, rng.integers(1, k + 1, (rows, cols)), 0)
        sw = SharedWeight(torch.from_numpy(centroids), torch.from_numpy(idx), bits)
        parametrize.register_parametrization(layer, "weight", sw, unsafe=True)
        codebook = np.concatenate([[0], centroids]).astype(np.float32)
        expected = torch.from_numpy(codebook[idx])
    else:
        w = rng.normal(0, 1, (rows, cols)).astype(np.float32) * keep
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
        apply_mask(layer, torch.from_numpy(keep))
        expected = torch.from_numpy(w)
    data, layers = fmt.encode(layer, index_bits=index_bits, coding=coding, shared_layout="sparse")
    c = fmt.decode(data)
    assert torch.equal(c.tensors["weight"], expected)
    assert torch.equal(c.tensors["bias"], layer.bias.detach())
    rec = {r.name: r for r in layers}["weight"]
    assert rec.nonzero == int(keep.sum())
    if shared:
        np.testing.assert_array_equal(c.codebooks["weight"][0], idx)
        # entries = real + fillers (+ a closing filler when the last weight is zero), by the paper's rule
        pos = np.flatnonzero(idx)
        if pos.size == 0 or pos[-1] != idx.size - 1:
            pos = np.append(pos, idx.size - 1)
        gaps = np.diff(pos, prepend=-1) - 1
        assert rec.entries == pos.size + int(np.sum(gaps >> index_bits))
        if coding == "fixed":
            assert rec.size_bytes == (math.ceil(rec.entries * bits / 8) + math.ceil(rec.entries * index_bits / 8)
                                      + 4 * ((1 << bits) - 1))


@pytest.mark.parametrize("case", ["version missing", "version other", "arch malformed", "meta list"])
def test_info_and_load_on_crafted_headers(tmp_path, mixed, case):
    mutate = {
        "version missing": lambda h: _pop(h, "version"),
        "version other": lambda h: h.update(version=7),
        "arch malformed": lambda h: h.update(arch={"name": "lenet300", "kwargs": [1]}),
        "meta list": lambda h: h.update(meta=[1, 2]),
    }[case]
    path = tmp_path / "crafted.edlz"
    path.write_bytes(reheader(fmt.encode(mixed)[0], mutate))
    for call in (fmt.info, fmt.load):
        try:
            call(path)
        except (FormatError, ModelError) as e:
            assert "\n" not in str(e)


# --------------------------------------------------------------------------- dense codes layout
@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_codes_layout_round_trip_and_choice(coding):
    torch.manual_seed(0)
    dense_shared = nn.Linear(50, 40)                  # ternary-like: 3 values, a third zero
    with torch.no_grad():
        dense_shared.weight.copy_(torch.randint(-1, 2, (40, 50)).float() * 0.25)
    data, layers = fmt.encode(dense_shared, coding=coding)
    rec = {r.name: r for r in layers}["weight"]
    assert rec.kind == "codes" and rec.weight_bits == 2 and rec.index_bits is None
    c = fmt.decode(data)
    assert torch.equal(c.tensors["weight"], dense_shared.weight.detach())
    codes, codebook = c.codebooks["weight"]
    np.testing.assert_array_equal(codebook[codes], dense_shared.weight.detach().numpy())
    sparse_data, sparse_layers = fmt.encode(dense_shared, coding=coding, shared_layout="sparse")
    assert len(data) < len(sparse_data)
    pruned = nn.Linear(200, 100)                      # 95% pruned: the sparse index wins
    with torch.no_grad():
        pruned.weight.copy_((torch.rand(100, 200) < 0.05).float() * 0.5)
    assert {r.name: r for r in fmt.encode(pruned, coding=coding)[1]}["weight"].kind == "shared"


@pytest.mark.parametrize("case", ["shape fewer", "shape more", "codebook index", "huge"])
def test_crafted_codes_headers_are_refused(case):
    layer = nn.Linear(30, 20)
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-1, 2, (20, 30)).float())
    data, _ = fmt.encode(layer, coding="huffman", shared_layout="codes")

    def mutate(h):
        t = next(t for t in h["tensors"] if t["name"] == "weight")
        if case == "shape fewer":
            t["shape"] = [20, 29]
        elif case == "shape more":
            t["shape"] = [20, 31]
        elif case == "codebook index":
            t["weight_bits"] = 1
        else:
            t["shape"] = [10 ** 6, 10 ** 6]

    assert_format_error(reheader(data, mutate))
