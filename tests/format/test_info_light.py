"""``format.info`` and ``format.is_container`` without torch: same numbers as a full read, fast start.

``edl info FILE`` must start in a fraction of a second, and ``import torch`` alone takes
about a second; so :func:`efficientdl.format.info` reads sizes from the header and the
section lengths and counts from the streams with numpy alone (its Huffman decoder
:func:`~efficientdl.format.streams.huffman_decode_numpy` is checked here against the
compiled one).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from efficientdl import format as fmt
from efficientdl.compress.coding.huffman import huffman_decode, huffman_encode
from efficientdl.errors import FormatError
from efficientdl.format.kinds import FILE_TENSOR_KINDS, KINDS
from efficientdl.format.streams import huffman_decode_numpy

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
MANIFEST = {f["file"]: f for f in json.loads((GOLDEN / "manifest.json").read_text())["files"]}
# the quant kind validates its record with core.state.QuantSpec, whose module imports torch
TORCH_FREE = sorted(name for name in MANIFEST if not name.startswith("quant"))

_PROBE = """
import json, sys
import efficientdl.format as f
out = {name: f.info(sys.argv[1] + "/" + name) for name in sys.argv[2:]}
out["_modules"] = sorted(m for m in ("torch", "numba", "efficientdl.compress", "efficientdl.core.state", "efficientdl.core.tensors") if m in sys.modules)
print(json.dumps(out))
"""


def _probe(names):
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(GOLDEN), *names], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_info_imports_neither_torch_nor_numba():
    out = _probe(TORCH_FREE)
    assert out.pop("_modules") == []
    for name, got in out.items():          # the same dict as in this (torch-importing) process
        assert got == fmt.info(GOLDEN / name), name


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_info_numbers_from_the_files_themselves(name):
    """Sizes and counts computed independently: file size, the hand-computed tensors of the ``.npz``."""
    entry = MANIFEST[name]
    got = fmt.info(GOLDEN / name)
    assert got["size_bytes"] == os.path.getsize(GOLDEN / name) == entry["size_bytes"]
    assert got["format_version"] == 1
    with np.load(GOLDEN / entry["expected"]) as z:
        expected = {k: z[k] for k in z.files}
    stored = {n: r for n, r in entry["records"].items() if r["kind"] != "alias"}     # a tied tensor counts once
    assert got["original_bytes"] == 4 * sum(expected[n].size for n in stored if expected[n].dtype.kind == "f")
    assert got["ratio"] == got["original_bytes"] / got["size_bytes"]
    tensors = {t["name"]: t for t in got["tensors"]}
    assert set(tensors) == set(expected)
    for n, t in tensors.items():
        assert t["kind"] == entry["records"][n]["kind"]
        assert t["weights"] == expected[n].size
        assert t["nonzero"] == (0 if t["kind"] == "alias" else int(np.count_nonzero(expected[n])))
        coded = entry["records"][n]["coding"] == "huffman"
        if t["kind"] in ("shared", "codes", "quant"):
            assert (t["weight_bits_huffman"] is not None) == coded
        if t["kind"] in ("sparse", "shared"):
            assert (t["index_bits_huffman"] is not None) == coded
    assert sum(t["size_bytes"] for t in got["tensors"]) < got["size_bytes"]     # plus prefix and header


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_info_equals_a_full_read_and_what_save_reported(name):
    assert fmt.info(GOLDEN / name)["tensors"] == [layer.to_dict() for layer in fmt.read(GOLDEN / name).layers]


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_info_on_a_pruned_shared_model_equals_save(tmp_path, coding):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):      # 16 levels, about 90 % zeros (long zero runs: fillers)
            w = layer.weight
            w.copy_(torch.round(w * 40).clamp(-8, 7) / 40 * (torch.rand_like(w) < 0.1))
    layers = fmt.save(model, tmp_path / "m.edlz", coding=coding)
    got = fmt.info(tmp_path / "m.edlz")["tensors"]
    assert got == [layer.to_dict() for layer in layers]
    assert got == [layer.to_dict() for layer in fmt.read(tmp_path / "m.edlz").layers]
    assert {t["kind"] for t in got} == {"shared", "dense"}


def _same_outcome(lengths, payload, count):
    try:
        want = huffman_decode(lengths, payload, count).astype(np.int64)
    except FormatError as e:
        with pytest.raises(FormatError) as got:
            huffman_decode_numpy(lengths, payload, count)
        assert str(got.value) == str(e)
        return "refused"
    assert np.array_equal(huffman_decode_numpy(lengths, payload, count).astype(np.int64), want)
    return "decoded"


@pytest.mark.parametrize("alphabet, count, skew", [(2, 50, 1.0), (32, 5000, 1.5), (256, 3000, 2.5),
                                                   (256, 40000, 1.2), (4096, 30000, 3.0), (65536, 2000, 1.0),
                                                   (64, 200000, 0.0)])
def test_numpy_huffman_decoder_equals_the_compiled_one(alphabet, count, skew):
    rng = np.random.default_rng(alphabet + count)
    p = 1.0 / np.arange(1, alphabet + 1) ** skew            # Zipf: long codewords for rare symbols
    if skew == 0:                                            # geometric: codewords longer than 16 bits
        p = 0.6 ** np.arange(alphabet)
    symbols = rng.choice(alphabet, size=count, p=p / p.sum())
    lengths, payload, _ = huffman_encode(symbols, alphabet)
    if skew == 0:
        assert lengths.max() > 16 and 8 * len(payload) >= 1 << 16
    assert np.array_equal(huffman_decode_numpy(lengths, payload, count), symbols)
    for trial in range(30):                                  # damaged streams: the same symbols or the same error
        bad = bytearray(payload)
        for _ in range(1 + trial % 3):
            bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        cut = bytes(bad[: len(bad) - (trial % 4 == 0)])
        _same_outcome(lengths, cut, count if trial % 5 else count + 3)


def test_numpy_huffman_decoder_refuses_as_the_compiled_one():
    incomplete = np.array([1, 2, 0, 0], np.uint8)           # code {0, 10}: "11" is no codeword
    assert _same_outcome(incomplete, bytes([0b01000000]), 3) == "decoded"   # 0 10 0
    assert _same_outcome(incomplete, bytes([0b11000000]), 2) == "refused"
    assert _same_outcome(np.array([1, 1, 1], np.uint8), b"\x00", 1) == "refused"     # Kraft
    assert _same_outcome(np.zeros(3, np.uint8), b"\x00", 1) == "refused"
    assert _same_outcome(np.array([1, 1], np.uint8), b"\x00", 9) == "refused"       # more symbols than bits
    assert _same_outcome(np.array([2, 2, 1], np.uint8), b"\xff", 5) == "refused"    # 11 11 11 11, then ends
    assert _same_outcome(np.array([1, 1], np.uint8), b"", 0) == "decoded"


def test_is_container(tmp_path):
    assert fmt.is_container(GOLDEN / "dense.edlz")
    assert not fmt.is_container(GOLDEN / "manifest.json")
    (tmp_path / "empty").write_bytes(b"")
    assert not fmt.is_container(tmp_path / "empty")
    for path in (tmp_path / "missing.edlz", tmp_path):
        with pytest.raises(FormatError) as e:
            fmt.is_container(path)
        assert str(e.value).startswith(f"{path}: cannot read (") and "\n" not in str(e.value)


def test_each_kind_is_one_registered_class():
    assert FILE_TENSOR_KINDS.names() == ["dense", "sparse", "shared", "codes", "quant", "alias"]
    assert [FILE_TENSOR_KINDS.get(k.name) for k in KINDS] == list(KINDS)
    assert len({type(k) for k in KINDS}) == len(KINDS)
    for kind in KINDS:
        assert kind.__doc__ and "Sections" in kind.__doc__ or kind.name == "alias"
