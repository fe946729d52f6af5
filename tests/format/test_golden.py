"""Golden files: committed ``.edlz`` files of format version 1 and what they decode to.

Version policy: FORMAT_VERSION 1; a reader loads every older version; a new version adds
golden files of its own and keeps the old ones.

The files under ``tests/data/golden/`` were written once by ``tools/make_golden.py``; each
comes with the tensors it must decode to, computed by hand from the model's inputs with
numpy (``W ⊙ M``, shared levels, ternary values, dequantized integers), never with the
decoder.  The tests check:

* every tensor decodes bit-exactly (same dtype, shape and bytes) to the ``.npz``;
* every record has the kind and coding the manifest names, and the files together cover
  every (kind, coding) the format has — so a kind cannot silently stop being exercised;
* the committed bytes have the manifest's SHA-256 — nobody regenerates them silently;
* today's encoder, given the stored inputs, writes the very same bytes — so a change made
  symmetrically in the encoder and the decoder (which round-trip tests cannot see) fails.
  (The header is zlib-compressed: a different zlib build could in principle compress it
  differently; the decoded-tensor checks above do not depend on that.)
"""

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from efficientdl import format as fmt

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
FILES = {f["file"]: f for f in MANIFEST["files"]}
ALL_KINDS = {("dense", None), ("alias", None)} | {(k, c) for k in ("sparse", "shared", "codes", "quant")
                                                 for c in ("huffman", "fixed")}


@functools.lru_cache(maxsize=None)
def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "tools" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_covers_every_kind_and_coding_of_version_1():
    assert MANIFEST["format_version"] == 1
    assert {(f["kind"], f["coding"]) for f in FILES.values()} == ALL_KINDS
    assert all(f["version"] == 1 for f in FILES.values())
    assert fmt.FORMAT_VERSION >= 1          # a reader of a later version must still pass these tests
    total = sum(path.stat().st_size for path in GOLDEN.iterdir() if path.is_file())
    assert total < 100_000


@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_bytes_have_the_manifest_sha256(name):
    data = (GOLDEN / name).read_bytes()
    assert len(data) == FILES[name]["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == FILES[name]["sha256"], (
        f"{name} changed: golden files are never regenerated (a new format version adds its own)")
    assert data[:4] == b"EDLZ" and int.from_bytes(data[4:6], "little") == FILES[name]["version"]


@pytest.mark.parametrize("name", sorted(FILES))
def test_decodes_bit_exactly_to_the_hand_computed_tensors(name):
    entry = FILES[name]
    c = fmt.read(GOLDEN / name)
    with np.load(GOLDEN / entry["expected"]) as z:
        expected = {k: z[k] for k in z.files}
    assert set(c.tensors) == set(expected)
    for key, want in expected.items():
        got = c.tensors[key].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.tobytes() == want.tobytes(), f"{name}: {key} differs"   # bit-exact, −0.0 ≠ +0.0 included
    # each record is of the kind and coding the manifest says
    kinds = {r["name"]: {"kind": r["kind"], "coding": r.get("coding")} for r in c.header["tensors"]}
    assert kinds == entry["records"]
    assert {(r["kind"], r["coding"]) for r in entry["records"].values()} >= {(entry["kind"], entry["coding"])}
    assert c.header["version"] == entry["version"]


@pytest.mark.parametrize("name", sorted(FILES))
def test_load_into_the_plain_architecture(name):
    """``format.load`` into the bare architecture gives the hand-computed tensors as the model's weights."""
    case = name.removesuffix(".edlz")
    model = fmt.load(GOLDEN / name, model=_make_golden().architecture(case))
    state = model.state_dict()
    with np.load(GOLDEN / FILES[name]["expected"]) as z:
        assert set(state) == set(z.files)
        for key in z.files:
            assert state[key].numpy().tobytes() == z[key].tobytes(), f"{case}: {key}"
    if case == "alias":          # tied in the file, tied in the loaded model
        assert model.out.weight is model.embed.weight


@pytest.mark.parametrize("name", sorted(FILES))
def test_todays_encoder_writes_the_committed_bytes(name):
    mg = _make_golden()
    case = name.removesuffix(".edlz")
    data = mg.encode_case(case, mg.load_inputs(GOLDEN)[case])
    committed = (GOLDEN / name).read_bytes()
    assert data == committed, (
        f"the encoder now writes {case} differently ({len(data)} vs {len(committed)} bytes), or the method that "
        "builds it (tools/make_golden.py: build) now gives another model: a change of the bytes on disk is a new "
        "FORMAT_VERSION with golden files of its own, and the reader must still load these")
