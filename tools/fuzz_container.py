"""Fuzz the compressed-file reader with mutated and truncated files.

Starting from valid files (a Deep Compression LeNet-300-100, a pruned-only layer, a
ternary layer in the codes layout, dense tensors, int8 and fixed-point layers, a pruned
and weight-shared LSTM with an embedding, and tied parameters), each case applies one
mutation:

* ``bitflip``: 1–8 random bits flipped anywhere;
* ``truncate``: the file cut at a random length;
* ``extend``: random bytes appended;
* ``random``: a random run of bytes overwritten;
* ``length``: a header length field (prefix) or a section's offset/length/shape/count in
  the JSON header changed, with every checksum recomputed so that only the semantic
  checks stand between the reader and the lie;
* ``garbage body``: the valid header kept, the body replaced by random bytes.

Every input must end in exactly one of: ``FormatError`` (the documented refusal) or a
successful decode equal bit for bit to the original's tensors (a mutation that changed
nothing meaningful, e.g. flipping the same bit twice).  Anything else — another
exception, a decode that takes more than a second, a decode that succeeds with different
tensors — is a failure.  Peak memory (tracemalloc) of each decode is compared with
``2 × the largest valid decode + the file size``.

Usage::

    python tools/fuzz_container.py --cases 10000 --json runs/bench/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import struct
import sys
import time
import tracemalloc
import zlib

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import format as fmt, models  # noqa: E402
from efficientdl.compress.quantization.fixed_point import freeze, quantize_linear  # noqa: E402
from efficientdl.compress.pruning.prune import apply_mask, magnitude_mask  # noqa: E402
from efficientdl.compress.quantization.share import share_layer  # noqa: E402
from efficientdl.errors import FormatError  # noqa: E402

PREFIX = struct.Struct("<4sHHII")


def seeds() -> dict[str, bytes]:
    torch.manual_seed(0)
    lenet = models.create("lenet300")
    for layer, sparsity, bits in ((lenet.fc1, 0.93, 4), (lenet.fc2, 0.92, 4), (lenet.fc3, 0.76, 4)):
        apply_mask(layer, magnitude_mask(layer.weight, sparsity))
        share_layer(layer, bits=bits)
    pruned = nn.Linear(64, 48)
    apply_mask(pruned, magnitude_mask(pruned.weight, 0.8))
    ternary = nn.Linear(40, 30)
    with torch.no_grad():
        ternary.weight.copy_(torch.randint(-1, 2, (30, 40)).float() * 0.3)
    dense = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    quantized = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Linear(20, 12))
    quantize_linear(quantized, None, scheme="affine", weight_bits=8, activation_bits=None)
    freeze(quantized)
    fixed = nn.Sequential(nn.Linear(30, 20))
    quantize_linear(fixed, None, scheme="fixed", weight_bits=6, activation_bits=None)
    freeze(fixed)
    recurrent = nn.Sequential(nn.Embedding(40, 16), nn.LSTM(16, 12), nn.Linear(12, 40))
    recurrent[2].weight = nn.Parameter(torch.randn(40, 12))
    apply_mask(recurrent[1], magnitude_mask(recurrent[1].weight_hh_l0, 0.9), "weight_hh_l0")
    share_layer(recurrent[1], bits=3, attr="weight_ih_l0")
    tied = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    tied[1].weight = tied[0].weight
    return {"lenet300": fmt.encode(lenet)[0], "pruned": fmt.encode(pruned, coding="fixed")[0],
            "ternary": fmt.encode(ternary)[0], "dense": fmt.encode(dense)[0],
            "int8": fmt.encode(quantized)[0], "fixed point": fmt.encode(fixed, coding="fixed")[0],
            "recurrent": fmt.encode(recurrent)[0], "tied": fmt.encode(tied)[0]}


def split(data: bytes) -> tuple[dict, bytes]:
    _, _, _, hlen, _ = PREFIX.unpack_from(data)
    header = json.loads(zlib.decompress(data[PREFIX.size:PREFIX.size + hlen]))
    return header, data[PREFIX.size + hlen:]


def join(header: dict, blob: bytes) -> bytes:
    raw = zlib.compress(json.dumps(header).encode())
    return PREFIX.pack(b"EDLZ", 1, 0, len(raw), zlib.crc32(raw)) + raw + blob


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    b = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "truncate":
        return bytes(b[:rng.randrange(len(b))])
    if kind == "extend":
        return bytes(b) + rng.randbytes(rng.randint(1, 64))
    if kind == "random":
        i = rng.randrange(len(b))
        n = rng.randint(1, 32)
        b[i:i + n] = rng.randbytes(min(n, len(b) - i))
        return bytes(b)
    if kind == "garbage body":
        header, blob = split(data)
        return join(header, rng.randbytes(len(blob)))
    # "length": a size or position field changed, checksums recomputed
    if rng.random() < 0.2:
        _, v, r, hlen, crc = PREFIX.unpack_from(data)
        hlen = max(0, hlen + rng.choice([-1, 1, -100, 100, 1 << 20, -hlen]))
        return PREFIX.pack(b"EDLZ", v, r, hlen, crc) + bytes(b[PREFIX.size:])
    header, blob = split(data)
    t = rng.choice(header["tensors"])
    choice = rng.choice(["shape", "entries", "offset", "length", "bits"])
    big = rng.choice([0, 1, 2, 7, 1000, 10 ** 6, 10 ** 12, -1])
    if choice == "shape" and t["shape"]:
        t["shape"][rng.randrange(len(t["shape"]))] = big if rng.random() < 0.5 else t["shape"][0] + rng.choice([-1, 1])
    elif choice == "entries" and "entries" in t:
        t["entries"] = max(0, t["entries"] + rng.choice([-1, 1, 1000, 10 ** 9]))
    elif choice in ("offset", "length") and t.get("sections"):
        key = rng.choice(sorted(t["sections"]))
        off, length, _ = t["sections"][key]
        if choice == "offset":
            off = max(0, off + rng.choice([-1, 1, 7, 10 ** 6]))
        else:
            length = max(0, length + rng.choice([-1, 1, 7, 10 ** 6]))
        section = blob[off:off + length]
        t["sections"][key] = [off, length, zlib.crc32(section)]
    elif choice == "bits" and ("weight_bits" in t or "index_bits" in t):
        t["weight_bits" if "weight_bits" in t else "index_bits"] = rng.choice([0, 1, 2, 3, 9, 16, 17])
    else:
        t["dtype"] = rng.choice(["float16", "int8", "complex64", "float32"])
    return join(header, blob)


def decode_measured(data: bytes):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = fmt.decode(data, "fuzz")
        error = None
    except FormatError as e:
        result, error = None, e
    except Exception as e:  # noqa: BLE001 - any other exception is what we are looking for
        result, error = None, e
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, error, seconds, peak


def same(a, b) -> bool:
    return set(a.tensors) == set(b.tensors) and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "fuzz.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    originals = seeds()
    reference = {name: fmt.decode(data) for name, data in originals.items()}
    valid_peak = max(decode_measured(data)[3] for data in originals.values())
    kinds = ["bitflip", "truncate", "extend", "random", "length", "garbage body"]
    counts = {k: {"cases": 0, "refused": 0, "unchanged": 0} for k in kinds}
    failures, max_seconds, worst_memory_ratio = [], 0.0, 0.0
    for case in range(args.cases):
        name = rng.choice(sorted(originals))
        kind = kinds[case % len(kinds)]
        data = mutate(originals[name], kind, rng)
        result, error, seconds, peak = decode_measured(data)
        counts[kind]["cases"] += 1
        max_seconds = max(max_seconds, seconds)
        bound = 2 * valid_peak + len(data)
        worst_memory_ratio = max(worst_memory_ratio, peak / bound)
        problem = None
        if error is not None and not isinstance(error, FormatError):
            problem = f"{type(error).__name__}: {error}"
        elif result is not None and not same(result, reference[name]):
            problem = "accepted a corrupted file"
        elif seconds > 1.0:
            problem = f"took {seconds:.2f} s"
        elif peak > bound:
            problem = f"peak memory {peak:,} B over the bound {bound:,} B"
        if problem:
            failures.append({"case": case, "seed_file": name, "mutation": kind, "problem": problem})
        elif error is not None:
            counts[kind]["refused"] += 1
        else:
            counts[kind]["unchanged"] += 1
    summary = {"cases": args.cases, "failures": failures[:50], "failure_count": len(failures),
               "per_mutation": counts, "max_decode_seconds": max_seconds, "valid_decode_peak_bytes": valid_peak,
               "worst_peak_over_bound": worst_memory_ratio}
    for kind, c in counts.items():
        print(f"{kind:13s} {c['cases']:6d} cases: {c['refused']:6d} refused, {c['unchanged']:4d} decoded unchanged")
    print(f"failures: {len(failures)}; slowest decode {1000 * max_seconds:.1f} ms; "
          f"worst peak memory {100 * worst_memory_ratio:.1f}% of the bound")
    for f in failures[:10]:
        print("  ", f)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
