"""Write the golden compressed files of format version 1 under ``tests/data/golden/``.

One small ``.edlz`` per (tensor kind, coding) — ``dense``, ``alias``, and ``sparse``,
``shared``, ``codes``, ``quant`` each with Huffman and fixed-width coding — written by the
encoder of the day (:func:`efficientdl.format.encode`), each with:

* ``<case>.npz``: the tensors the file must decode to, computed here from the inputs by
  hand (numpy), never by the decoder: the masked weights ``W ⊙ M``, the codebook values
  ``C[I]``, the ternary values ``{−W_n, 0, W_p}``, the dequantized ``q · 2^(−fl)`` and
  ``round(w / s) · s``;
* ``inputs.npz``: the inputs every model was built from (latent weights, masks; keys
  ``<case>/<name>``), so that a test can rebuild the same models without a random
  generator and re-encode them;
* ``manifest.json``: per file, its kind, coding, the kind and coding of every record,
  ``FORMAT_VERSION`` and the SHA-256 of the bytes.

``tests/format/test_golden.py`` checks the committed files against all of that.  Version
policy: a reader loads every older version; a new ``FORMAT_VERSION`` adds golden files of
its own and keeps the old ones — so never run this script to "fix" a failing golden test
of an existing version (it refuses to overwrite files unless ``--force``).

Usage::

    .venv/bin/python tools/make_golden.py            # write the files (refuses to overwrite)
    .venv/bin/python tools/make_golden.py --check    # compare the committed files with a fresh encode
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from efficientdl.compress import apply_mask, freeze, quantize_linear, share_layer, ternarize  # noqa: E402
from efficientdl.format import FORMAT_VERSION, encode  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden"
CODINGS = ("huffman", "fixed")


# --------------------------------------------------------------------------- inputs (numpy only)
def _normal(seed: int, shape: tuple[int, ...], scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _mask(seed: int, shape: tuple[int, ...], keep: float, zero_run: slice) -> np.ndarray:
    """A random mask with one long run of zeros (longer than 2^5: the relative index needs a filler)
    and the last element kept or not as the seed says."""
    m = np.random.default_rng(seed).random(shape) < keep
    m.reshape(-1)[zero_run] = False
    return m


def _inputs(case: str) -> dict[str, np.ndarray]:
    """The numbers each case is built from (generated once; then stored beside the file)."""
    seed = {"dense": 1, "alias": 2, "sparse": 3, "shared": 4, "codes": 5, "quant": 6}[case.split("_")[0]]
    seed = seed * 10 + (1 if case.endswith("fixed") else 0)
    rng = np.random.default_rng(seed)
    if case == "dense":            # > 255 distinct values: not inferred as weight-shared
        return {"fc.weight": _normal(seed, (16, 20)), "fc.bias": _normal(seed + 1, (16,)),
                "bn.weight": _normal(seed + 2, (16,)) + 1, "bn.bias": _normal(seed + 3, (16,)),
                "bn.running_mean": _normal(seed + 4, (16,)), "bn.running_var": np.abs(_normal(seed + 5, (16,))) + 1,
                "bn.num_batches_tracked": np.array(7, np.int64),
                "extra.f16": _normal(seed + 6, (3, 2)).astype(np.float16),
                "extra.f64": _normal(seed + 7, (4,)).astype(np.float64),
                "extra.i32": rng.integers(-1000, 1000, (5,)).astype(np.int32),
                "extra.i16": rng.integers(-300, 300, (2, 2)).astype(np.int16),
                "extra.i8": rng.integers(-128, 128, (6,)).astype(np.int8),
                "extra.u8": rng.integers(0, 256, (6,)).astype(np.uint8),
                "extra.flag": rng.random((7,)) < 0.5}
    if case == "alias":            # embedding tied to the output layer
        return {"embed.weight": _normal(seed, (20, 16)), "out.bias": _normal(seed + 1, (20,))}
    if case.startswith("sparse"):  # > 255 kept values: stored as fp32 values, not a codebook
        return {"fc.weight": _normal(seed, (16, 32)), "fc.bias": _normal(seed + 1, (16,)),
                "fc.mask": _mask(seed + 2, (16, 32), 0.65, slice(100, 150))}
    if case.startswith("shared"):  # 7 evenly spaced values: 3-bit k-means recovers them exactly
        levels = np.array([-0.875, -0.625, -0.375, -0.125, 0.125, 0.375, 0.625], np.float32)
        return {"fc.weight": levels[rng.integers(0, 7, (8, 16))], "fc.bias": _normal(seed + 1, (8,)),
                "fc.mask": _mask(seed + 2, (8, 16), 0.6, slice(20, 60))}
    if case.startswith("codes"):   # latent weights for TTQ: large ones +0.75 / −0.5, small ones below Δ
        kind = rng.integers(0, 3, (8, 16))
        small = ((rng.random((8, 16)) - 0.5) * 0.05).astype(np.float32)     # |w| < 0.025 < Δ = 0.0375
        latent = np.where(kind == 0, np.float32(-0.5), np.where(kind == 2, np.float32(0.75), small))
        return {"fc.weight": latent.astype(np.float32), "fc.bias": _normal(seed + 1, (8,))}
    if case.startswith("quant"):
        # fixed point, 6 bits, fl = 5: integers in [−32, 31] (the peak −32 and odd codes present), so
        # fl = 5 is the only radix point with zero error; affine per channel, 4 bits: any values
        q = rng.integers(-32, 32, (8, 16)).astype(np.int64)
        q[0, 0], q[1, 1] = -32, 31
        return {"fx.weight": (q * 2.0 ** -5).astype(np.float32), "fx.bias": _normal(seed + 1, (8,)),
                "af.weight": _normal(seed + 2, (6, 8)) * np.linspace(0.5, 3, 6, dtype=np.float32)[:, None],
                "af.bias": _normal(seed + 3, (6,))}
    raise KeyError(case)


# --------------------------------------------------------------------------- models
class Buffers(nn.Module):
    """Plain buffers of every dtype the file stores densely."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)


def _copy(module: nn.Module, inputs: dict[str, np.ndarray], prefix: str) -> None:
    with torch.no_grad():
        for name, value in module.named_parameters(recurse=False):
            if f"{prefix}.{name}" in inputs:             # a tied parameter is copied under its first name
                value.copy_(torch.from_numpy(inputs[f"{prefix}.{name}"]))
        for name, value in module.named_buffers(recurse=False):
            if f"{prefix}.{name}" in inputs:
                value.copy_(torch.from_numpy(inputs[f"{prefix}.{name}"]))


EXTRA = {"f16": ((3, 2), torch.float16), "f64": ((4,), torch.float64), "i32": ((5,), torch.int32),
         "i16": ((2, 2), torch.int16), "i8": ((6,), torch.int8), "u8": ((6,), torch.uint8), "flag": ((7,), torch.bool)}
LAYERS = {"sparse": [("fc", 32, 16)], "shared": [("fc", 16, 8)], "codes": [("fc", 16, 8)],
          "quant": [("fx", 16, 8), ("af", 8, 6)]}


def architecture(case: str) -> nn.Module:
    """The plain (uncompressed, untrained) architecture of ``case``: what ``format.load`` loads into."""
    model = nn.Module()
    if case == "dense":
        model.fc, model.bn = nn.Linear(20, 16), nn.BatchNorm1d(16)
        model.extra = Buffers({name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in EXTRA.items()})
    elif case == "alias":
        model.embed, model.out = nn.Embedding(20, 16), nn.Linear(16, 20)
        model.out.weight = model.embed.weight            # tied: the file stores it once
    else:
        for name, fan_in, fan_out in LAYERS[case.split("_")[0]]:
            setattr(model, name, nn.Linear(fan_in, fan_out))
    return model


def build(case: str, inputs: dict[str, np.ndarray]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``case`` built from ``inputs`` with the public API, and its ``encode`` arguments."""
    kwargs: dict[str, Any] = {"coding": "fixed" if case.endswith("fixed") else "huffman"}
    model = architecture(case)
    for prefix, module in model.named_children():
        _copy(module, inputs, prefix)
    if case.startswith("sparse"):
        apply_mask(model.fc, torch.from_numpy(inputs["fc.mask"]))
    elif case.startswith("shared"):
        apply_mask(model.fc, torch.from_numpy(inputs["fc.mask"]))
        share_layer(model.fc, bits=3)
        kwargs["shared_layout"] = "sparse"
    elif case.startswith("codes"):
        ternarize(model, "ttq", threshold=0.05, keep_first_last=False)
        kwargs["shared_layout"] = "codes"
    elif case.startswith("quant"):
        quantize_linear(model.fx, None, scheme="fixed", weight_bits=6, activation_bits=None)
        quantize_linear(model.af, None, scheme="affine", weight_bits=4, activation_bits=None, per_channel=True)
        freeze(model)
    return model.eval(), kwargs


# --------------------------------------------------------------------------- expected tensors (by hand)
def expected(case: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the file must decode to, from the inputs and the methods' documented math."""
    out = {k: v for k, v in inputs.items() if not k.endswith(".mask")}
    if case == "dense":
        return out
    if case == "alias":
        return {"embed.weight": inputs["embed.weight"], "out.weight": inputs["embed.weight"],
                "out.bias": inputs["out.bias"]}
    if case.startswith("sparse"):                 # W ⊙ M
        out["fc.weight"] = np.where(inputs["fc.mask"], inputs["fc.weight"], np.float32(0)).astype(np.float32)
    elif case.startswith("shared"):               # the kept values are already the 7 shared levels
        out["fc.weight"] = np.where(inputs["fc.mask"], inputs["fc.weight"], np.float32(0)).astype(np.float32)
    elif case.startswith("codes"):                # TTQ: W_p = mean of w > Δ, W_n = mean of −w < −Δ
        w = inputs["fc.weight"]
        delta = np.float32(0.05) * np.abs(w).max()
        out["fc.weight"] = np.where(w > delta, np.float32(0.75),
                                    np.where(w < -delta, np.float32(-0.5), np.float32(0))).astype(np.float32)
    elif case.startswith("quant"):
        # fixed point: the inputs are on the grid q · 2^−5 already
        # affine, symmetric, per output channel, b = 4: s_c = max_j |w_cj| / 7, x̂ = clamp(round(w / s), −8, 7) · s
        w = inputs["af.weight"]
        s = (np.abs(w).max(axis=1) / np.float32(7)).astype(np.float32)[:, None]
        q = np.clip(np.rint(w / s) + np.float32(0), -8, 7).astype(np.float32)   # + z (= 0): −0 becomes +0
        out["af.weight"] = (q * s).astype(np.float32)
    return out


CASES = ["dense", "alias"] + [f"{kind}_{coding}" for kind in ("sparse", "shared", "codes", "quant")
                              for coding in CODINGS]
KIND_OF = {case: case.split("_")[0] for case in CASES}
CODING_OF = {case: (case.split("_")[1] if "_" in case else None) for case in CASES}


def records(case: str) -> dict[str, dict[str, Any]]:
    """The kind and coding every record of ``case`` must have."""
    kind, coding = KIND_OF[case], CODING_OF[case]
    dense = {"kind": "dense", "coding": None}
    names = list(expected(case, _inputs(case)))
    out = {n: dict(dense) for n in names}
    if case == "alias":
        out["out.weight"] = {"kind": "alias", "coding": None}
    elif kind != "dense":
        for n in names:
            if n.endswith(".weight"):
                out[n] = {"kind": kind, "coding": coding}
    return out


def encode_case(case: str, inputs: dict[str, np.ndarray]) -> bytes:
    """The bytes of ``case``'s file as today's encoder writes them."""
    model, kwargs = build(case, inputs)
    data, _ = encode(model, **kwargs)
    return data


def load_inputs(folder: Path = GOLDEN) -> dict[str, dict[str, np.ndarray]]:
    """The stored inputs of every case, ``{case: {name: array}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(folder / "inputs.npz") as z:
        for key in z.files:
            case, name = key.split("/", 1)
            out.setdefault(case, {})[name] = z[key]
    return out


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=GOLDEN)
    ap.add_argument("--force", action="store_true", help="overwrite existing golden files (a new version only!)")
    ap.add_argument("--check", action="store_true", help="re-encode and compare with the files in --out")
    args = ap.parse_args(argv)
    out: Path = args.out
    if args.check:
        stored = load_inputs(out)
        bad = [c for c in CASES if encode_case(c, stored[c]) != (out / f"{c}.edlz").read_bytes()]
        print("ok" if not bad else f"differ: {', '.join(bad)}")
        return 1 if bad else 0
    if (out / "manifest.json").exists() and not args.force:
        print(f"{out}/manifest.json exists: golden files are never regenerated (use --force for a new set)",
              file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "policy": "FORMAT_VERSION 1; a reader loads every older version; a new version adds golden files "
                  "of its own and keeps the old ones",
        "written_by": "tools/make_golden.py",
        "files": [],
    }
    all_inputs = {}
    for case in CASES:
        inputs = _inputs(case)
        all_inputs.update({f"{case}/{k}": v for k, v in inputs.items()})
        data = encode_case(case, inputs)
        assert encode_case(case, inputs) == data, f"{case}: the encoder is not deterministic"
        (out / f"{case}.edlz").write_bytes(data)
        (out / f"{case}.npz").write_bytes(_npz_bytes(expected(case, inputs)))
        manifest["files"].append({"file": f"{case}.edlz", "version": FORMAT_VERSION, "kind": KIND_OF[case],
                                  "coding": CODING_OF[case], "sha256": _sha256(data), "size_bytes": len(data),
                                  "expected": f"{case}.npz",
                                  "records": records(case)})
        print(f"{case:16s} {len(data):6d} bytes")
    (out / "inputs.npz").write_bytes(_npz_bytes(all_inputs))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
