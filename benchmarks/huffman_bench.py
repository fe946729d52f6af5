"""Benchmark of the canonical Huffman coder on skewed 5-bit symbol streams.

Two streams stand in for what Deep Compression (Han et al., ICLR 2016) Huffman-codes:

* ``cluster``: weight-sharing cluster indices of 32 clusters drawn from a
  discretised Gaussian (mean 15.5, standard deviation 3 clusters), like the
  bell-shaped weight histogram of a quantized layer;
* ``relindex``: 5-bit relative sparse indices (zeros skipped, with filler
  entries) of a layer that keeps 10% of its weights at random positions.

For each stream it reports the median over the repeats of encode and decode
throughput (MB/s with one byte per symbol, on one numba thread), the Huffman
payload size against zlib level 9 and lzma preset 9 of the same symbols stored one
byte each, against the Shannon entropy bound, and against the pure-Python
``dahuffman`` package when it is installed (its throughput measured on a prefix).

Usage::

    python benchmarks/huffman_bench.py --symbols 10000000 --json bench.json
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import lzma  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402

try:
    import efficientdl  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from efficientdl.compress.coding.huffman import huffman_decode, huffman_encode  # noqa: E402
from efficientdl.compress.coding.sparse_index import relative_index_encode  # noqa: E402

NUM_SYMBOLS = 32  # 5-bit alphabet


def make_streams(count: int, seed: int) -> dict[str, np.ndarray]:
    """Build the two benchmark streams of ``count`` symbols each (uint8)."""
    rng = np.random.default_rng(seed)
    cluster = np.clip(np.rint(rng.normal(15.5, 3.0, count)), 0, NUM_SYMBOLS - 1).astype(np.uint8)
    # Enough dense positions that the encoded relative indices exceed `count`.
    dense_length = int(count * 10.5) + 1000
    positions = np.flatnonzero(rng.random(dense_length) < 0.1)
    deltas, _ = relative_index_encode(positions, 5)
    relindex = deltas[:count].astype(np.uint8)
    return {"cluster": cluster, "relindex": relindex}


def entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the empirical distribution, in bits per symbol."""
    p = np.bincount(symbols, minlength=NUM_SYMBOLS) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def dahuffman_result(symbols: np.ndarray, prefix: int) -> dict:
    """Size on the whole stream and throughput on a prefix of the dahuffman codec."""
    try:
        import dahuffman
    except ImportError:
        return {"status": "not installed"}
    counts = np.bincount(symbols, minlength=NUM_SYMBOLS)
    codec = dahuffman.HuffmanCodec.from_frequencies({int(s): int(c) for s, c in enumerate(counts) if c})
    table = codec.get_code_table()
    bits = sum(int(c) * table[int(s)][0] for s, c in enumerate(counts) if c) + table[codec._eof][0]
    part = symbols[:prefix].tolist()
    t0 = time.perf_counter()
    encoded = codec.encode(part)
    t1 = time.perf_counter()
    decoded = codec.decode(encoded)
    t2 = time.perf_counter()
    if decoded != part:
        raise RuntimeError("dahuffman round trip failed")
    return {
        "status": f"dahuffman {importlib.metadata.version('dahuffman')}",
        "size_bytes": (bits + 7) // 8,
        "throughput_symbols": prefix,
        "encode_mb_s": prefix / (t1 - t0) / 1e6,
        "decode_mb_s": prefix / (t2 - t1) / 1e6,
    }


def bench_stream(symbols: np.ndarray, repeats: int, dahuffman_prefix: int) -> dict:
    """Time and size one stream."""
    n = symbols.size
    huffman_encode(symbols[:1000], NUM_SYMBOLS)  # warm-up: compile or load the cache
    lengths, payload, bit_length = huffman_encode(symbols, NUM_SYMBOLS)
    huffman_decode(lengths, payload, 1000)
    enc_s, dec_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lengths, payload, bit_length = huffman_encode(symbols, NUM_SYMBOLS)
        t1 = time.perf_counter()
        decoded = huffman_decode(lengths, payload, n)
        t2 = time.perf_counter()
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
    if not np.array_equal(decoded, symbols):
        raise RuntimeError("Huffman round trip failed")
    raw = symbols.tobytes()
    t0 = time.perf_counter()
    zlib_size = len(zlib.compress(raw, 9))
    t1 = time.perf_counter()
    lzma_size = len(lzma.compress(raw, preset=9))
    t2 = time.perf_counter()
    h = entropy_bits(symbols)
    return {
        "symbols": n,
        "entropy_bits_per_symbol": h,
        "huffman_bits_per_symbol": bit_length / n,
        "max_code_length_bits": int(lengths.max()),
        "encode_mb_s_median": n / statistics.median(enc_s) / 1e6,
        "decode_mb_s_median": n / statistics.median(dec_s) / 1e6,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "raw_bytes": n,
        "huffman_payload_bytes": len(payload),
        "huffman_lengths_table_bytes": int(lengths.size),
        "entropy_bound_bytes": int(np.ceil(h * n / 8)),
        "zlib9_bytes": zlib_size,
        "zlib9_s": t1 - t0,
        "lzma9_bytes": lzma_size,
        "lzma9_s": t2 - t1,
        "dahuffman": dahuffman_result(symbols, dahuffman_prefix),
    }


def markdown(results: dict) -> str:
    """Render the results as two Markdown tables."""
    lines = [
        "| stream | decode MB/s (median) | encode MB/s (median) | bits/symbol | entropy bits/symbol | max code bits |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['decode_mb_s_median']:.1f} | {r['encode_mb_s_median']:.1f} | "
            f"{r['huffman_bits_per_symbol']:.4f} | {r['entropy_bits_per_symbol']:.4f} | {r['max_code_length_bits']} |"
        )
    lines += [
        "",
        "| stream | raw bytes | Huffman payload | entropy bound | zlib -9 | lzma -9 | dahuffman |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        d = r["dahuffman"]
        if "size_bytes" in d:
            dtext = (
                f"{d['size_bytes']:,} B; enc {d['encode_mb_s']:.2f} / dec {d['decode_mb_s']:.2f} MB/s"
                f" on {d['throughput_symbols']:,} symbols"
            )
        else:
            dtext = d["status"]
        lines.append(
            f"| {name} | {r['raw_bytes']:,} | {r['huffman_payload_bytes']:,} | {r['entropy_bound_bytes']:,} | "
            f"{r['zlib9_bytes']:,} | {r['lzma9_bytes']:,} | {dtext} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000_000, help="symbols per stream")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported), at least 5")
    parser.add_argument("--dahuffman-symbols", type=int, default=200_000, help="prefix timed with dahuffman")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.symbols < 1000:
        parser.error("--symbols must be at least 1000")
    repeats = max(5, args.repeats)
    streams = make_streams(args.symbols, args.seed)
    results = {name: bench_stream(s, repeats, min(args.dahuffman_symbols, s.size)) for name, s in streams.items()}
    print(markdown(results))
    if args.json:
        meta = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "numba_num_threads": os.environ.get("NUMBA_NUM_THREADS"),
            "repeats": repeats,
            "seed": args.seed,
        }
        args.json.write_text(json.dumps({"meta": meta, "streams": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
