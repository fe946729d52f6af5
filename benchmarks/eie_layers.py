"""The EIE benchmark layers on this machine: dense torch vs torch CSR vs scipy CSR vs our kernel.

The nine layers of Han et al., ISCA'16 (Table III), each a random matrix at the
paper's weight density with 4-bit weight sharing (15 shared values + the zero), and
an input at the paper's activation density.  For batch 1 and batch 64 the median
latency of each method is measured side by side in one run:

* dense fp32 ``torch.nn.functional.linear`` (MKL/oneDNN, all torch threads);
* ``torch`` sparse CSR (fp32 values, int64 indices) times the input;
* ``scipy.sparse`` CSR (fp32 values, int32 indices; single-threaded);
* the compressed kernel (:func:`efficientdl.kernels.cpu.matmul` with both layouts: the
  column-partitioned one skips zero activations, the row-major twin serves dense inputs and
  batches; all numba threads).  Its memory counts both layouts.

The methods are timed in turn, in rounds of a few calls each (:func:`median_us`), so a
drift of the machine's speed reaches all of them alike.  Two cache regimes are reported.
*warm*: the same call repeated, so a matrix that fits the last-level cache is read from
it.  *cold*: a 64 MiB buffer is written before every timed call, so the weights come from
DRAM as they do when a whole network (AlexNet: 240 MB) runs layer after layer — the
regime EIE was designed for.

End to end: batch-1 inference of compressed LeNet-300-100 / LeNet-5 files, the
compressed runtime against the dense decoded model, on real test images, timed in turn
as the layers are.

Usage::

    python benchmarks/eie_layers.py --json runs/bench/eie_layers.json \\
        --models runs/bench/lenet300/lenet300-s93-b4.edlz runs/bench/lenet5/lenet5-s93-b6_4.edlz
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import platform
import sys
import time
import warnings

import numba
import numpy as np
import scipy.sparse
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data  # noqa: E402
from efficientdl import format as fmt  # noqa: E402
from efficientdl.kernels import cpu  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402

# name: (inputs, outputs, weight density, activation density) — EIE Table III
LAYERS = {
    "Alex-6": (9216, 4096, 0.09, 0.351),
    "Alex-7": (4096, 4096, 0.09, 0.353),
    "Alex-8": (4096, 1000, 0.25, 0.375),
    "VGG-6": (25088, 4096, 0.04, 0.183),
    "VGG-7": (4096, 4096, 0.04, 0.375),
    "VGG-8": (4096, 1000, 0.23, 0.411),
    "NT-We": (4096, 600, 0.10, 1.0),
    "NT-Wd": (600, 8791, 0.11, 1.0),
    "NT-LSTM": (1201, 2400, 0.10, 1.0),
}
METHODS = ("dense", "torch_csr", "scipy_csr", "compressed")
_FLUSH = np.ones(16 << 20, np.float32)   # 64 MiB, twice the last-level cache of common server CPUs


def median_us(fns: dict, repeat: int, cold: bool, block: int = 5, settle_s: float = 0.02) -> dict:
    """Median latency (µs) of each method, the methods timed in turn.

    The machine's speed drifts (other tenants share its last-level cache and memory
    bandwidth), so timing one method after another would give each a different machine.
    Instead the calls run in rounds: each round times ``block`` calls of every method, in a
    rotating order.  Before its block a method runs untimed for ``settle_s``: that brings
    its own data back into the cache (the *warm* regime) and outlasts the previous
    method's thread pool, whose workers spin for a few milliseconds after their last task
    and would otherwise take the cores (measured: torch's sparse product slowed the next
    call of our kernel by 1.2×).  *cold*: a 64 MiB buffer is written before every timed call.
    """
    names = list(fns)
    for fn in fns.values():
        fn()                                  # JIT
    times = {m: [] for m in names}
    rounds = max(1, -(-repeat // block))
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for m in order:
            fn = fns[m]
            start = time.perf_counter()
            fn()
            while time.perf_counter() - start < settle_s:
                fn()
            for _ in range(block):
                if cold:
                    np.add(_FLUSH, 1.0, out=_FLUSH)
                t = time.perf_counter()
                fn()
                times[m].append(time.perf_counter() - t)
    return {m: 1e6 * float(np.median(v)) for m, v in times.items()}


def make_layer(cols: int, rows: int, weight_density: float, rng: np.random.Generator):
    codes = np.zeros((rows, cols), np.uint8)
    for r0 in range(0, rows, 512):           # in slabs, to bound the temporary memory
        slab = rng.random((min(512, rows - r0), cols), dtype=np.float32) < weight_density
        codes[r0:r0 + slab.shape[0]][slab] = rng.integers(1, 16, int(slab.sum()), dtype=np.uint8)
    codebook = np.concatenate([[0.0], np.sort(rng.normal(0, 0.05, 15))]).astype(np.float32)
    return codes, codebook


def make_input(cols: int, batch: int, act_density: float, rng: np.random.Generator) -> np.ndarray:
    """ReLU-like activations: nonnegative, zero with probability 1 − density."""
    x = rng.random((batch, cols), dtype=np.float32)
    return np.ascontiguousarray(x * (rng.random((batch, cols)) < act_density), dtype=np.float32)


def bench_layer(name: str, spec, batches, repeat: int, regimes, rng) -> list[dict]:
    cols, rows, wd, ad = spec
    codes, codebook = make_layer(cols, rows, wd, rng)
    w = codebook[codes]                                   # dense fp32 (rows, cols)
    w_t = torch.from_numpy(w)
    w_csr_t = w_t.to_sparse_csr()
    w_csr_sp = scipy.sparse.csr_matrix(w)
    packed = cpu.pack(codes, codebook)
    twin = cpu.pack_rows(codes, codebook)
    nnz = int(np.count_nonzero(codes))
    memory = {"dense": w.nbytes,
              "torch_csr": sum(t.numel() * t.element_size() for t in (w_csr_t.crow_indices(), w_csr_t.col_indices(),
                                                                        w_csr_t.values())),
              "scipy_csr": w_csr_sp.data.nbytes + w_csr_sp.indices.nbytes + w_csr_sp.indptr.nbytes,
              "compressed": packed.nbytes + twin.nbytes}
    out = []
    for batch in batches:
        x = make_input(cols, batch, ad, rng)               # (batch, cols)
        x_t = torch.from_numpy(x)
        x_cols = np.ascontiguousarray(x.T) if batch > 1 else x[0].copy()   # (cols, batch) or (cols,)
        x_cols_t = torch.from_numpy(x_cols if batch > 1 else x_cols[:, None].copy())
        expected = x.astype(np.float64) @ w.T.astype(np.float64)
        got = cpu.matmul(packed, x_cols, twin=twin)
        got = got[None, :] if batch == 1 else got.T
        err = float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max()))
        fns = {
            "dense": lambda: torch.nn.functional.linear(x_t, w_t),
            "torch_csr": lambda: w_csr_t @ x_cols_t,
            "scipy_csr": lambda: w_csr_sp @ x_cols,
            "compressed": lambda: cpu.matmul(packed, x_cols, twin=twin),
        }
        with torch.no_grad():
            for regime in regimes:
                reps = repeat if batch == 1 else max(5, repeat // 4)
                lat = median_us(fns, reps, regime == "cold", block=5 if batch == 1 else 3)
                row = {"layer": name, "batch": batch, "regime": regime, "rows": rows, "cols": cols,
                       "weight_density": wd, "activation_density": ad, "nnz": nnz,
                       "entries": int(packed.entries.size), "entry_bits": packed.entry_bits,
                       "latency_us": lat, "memory_bytes": memory, "max_rel_error": err,
                       "speedup_over_dense": {m: lat["dense"] / lat[m] for m in METHODS}}
                out.append(row)
                print(f"{name:8s} batch {batch:2d} {regime}: " + "  ".join(f"{m} {lat[m]:9.1f} µs" for m in METHODS)
                      + f"  → {row['speedup_over_dense']['compressed']:.1f}× over dense", flush=True)
    return out


def median_cuda_us(fn, repeat: int) -> float:
    """Median wall time of one call including its launch, synchronised after each call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


GPU_METHODS = ("dense_fp16", "cusparse_csr_fp16", "compressed")


def bench_layer_gpu(name: str, spec, batches, repeat: int, rng) -> list[dict]:
    """Dense fp16 cuBLAS vs cuSPARSE CSR (fp16) vs the Triton kernel, on the first CUDA device."""
    from efficientdl.kernels import gpu

    cols, rows, wd, ad = spec
    codes, codebook = make_layer(cols, rows, wd, rng)
    dev = torch.device("cuda")
    w = torch.from_numpy(codebook[codes]).to(dev, torch.float16)
    w_csr = w.to_sparse_csr()
    packed = gpu.GpuPackedMatrix.from_codes(codes, codebook, dev)
    out = []
    for batch in batches:
        x = torch.from_numpy(make_input(cols, batch, ad, rng)).to(dev, torch.float16)      # (batch, cols)
        x_cols = x.t().contiguous() if batch > 1 else x[0].contiguous()
        x_cols2 = x_cols if batch > 1 else x_cols[:, None]
        fns = {"dense_fp16": lambda: torch.nn.functional.linear(x, w),
               "cusparse_csr_fp16": lambda: w_csr @ x_cols2,
               "compressed": lambda: gpu.matmul(packed, x_cols)}
        expected = (x.double() @ w.double().t()).t()
        got = gpu.matmul(packed, x_cols).double()
        got = got[:, None] if batch == 1 else got
        err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        lat = {m: median_cuda_us(f, repeat) for m, f in fns.items()}
        row = {"layer": name, "batch": batch, "regime": "gpu", "rows": rows, "cols": cols, "weight_density": wd,
               "activation_density": ad, "nnz": int(np.count_nonzero(codes)), "latency_us": lat,
               "memory_bytes": {"dense_fp16": w.numel() * 2, "compressed": packed.nbytes},
               "max_rel_error": err, "speedup_over_dense": {m: lat["dense_fp16"] / lat[m] for m in GPU_METHODS}}
        out.append(row)
        print(f"{name:8s} batch {batch:2d} gpu: " + "  ".join(f"{m} {lat[m]:8.1f} µs" for m in GPU_METHODS)
              + f"  → {row['speedup_over_dense']['compressed']:.2f}× over dense fp16 (error {err:.1e})", flush=True)
    return out


def bench_models(paths: list[pathlib.Path], repeat: int, data_dir: str | None) -> list[dict]:
    results = []
    for path in paths:
        container = fmt.read(path)
        dense = fmt.load(container)
        fast = fmt.load(container, runtime="compressed")
        ds = data.load("fashion-mnist", data_dir=data_dir, test_batch_size=1, test_subset=repeat, seed=0)
        images = [x for x, _ in ds.test]
        with torch.no_grad():
            # each call classifies the next test image; the two models are timed in turn
            feeds = {"dense": itertools.cycle(images), "compressed": itertools.cycle(images)}
            lat = median_us({"dense": lambda: dense(next(feeds["dense"])),
                             "compressed": lambda: fast(next(feeds["compressed"]))}, repeat, cold=False)
            agree = sum(int(dense(x).argmax() == fast(x).argmax()) for x in images)
        results.append({"file": str(path), "arch": container.header["arch"]["name"], "batch": 1,
                        "latency_us": lat, "speedup": lat["dense"] / lat["compressed"],
                        "same_prediction": agree / len(images), "images": len(images)})
        print(f"{path.name}: dense {lat['dense']:.1f} µs, compressed runtime {lat['compressed']:.1f} µs "
              f"({lat['dense'] / lat['compressed']:.2f}×), same prediction on {agree}/{len(images)}", flush=True)
    return results


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarise(rows: list[dict], batches, regimes) -> tuple[dict, str]:
    summary, lines = {}, []
    for regime in regimes:
        for batch in batches:
            sel = [r for r in rows if r["batch"] == batch and r["regime"] == regime]
            if not sel:
                continue
            key = f"batch{batch}_{regime}"
            summary[key] = {
                "geomean_speedup_over_dense": {m: geomean(r["speedup_over_dense"][m] for r in sel) for m in METHODS},
                "faster_than_torch_csr": [r["layer"] for r in sel
                                          if r["latency_us"]["compressed"] < r["latency_us"]["torch_csr"]],
                "dense_wins": [r["layer"] for r in sel if r["latency_us"]["dense"] < r["latency_us"]["compressed"]],
            }
            table = [[r["layer"], *(r["latency_us"][m] for m in METHODS),
                      r["speedup_over_dense"]["compressed"], r["latency_us"]["torch_csr"] / r["latency_us"]["compressed"]]
                     for r in sel]
            g = summary[key]["geomean_speedup_over_dense"]
            table.append(["geomean speedup over dense", "1", f"{g['torch_csr']:.2f}×", f"{g['scipy_csr']:.2f}×",
                          f"{g['compressed']:.2f}×", "", ""])
            lines += [f"### batch {batch}, {regime} cache (median µs)", "",
                      markdown_table(table, ["layer", "dense fp32", "torch CSR", "scipy CSR", "compressed",
                                             "speedup vs dense", "speedup vs torch CSR"]), ""]
    mem = [[r["layer"], r["nnz"], r["entries"], r["entry_bits"], *(r["memory_bytes"][m] for m in METHODS),
            r["memory_bytes"]["dense"] / r["memory_bytes"]["compressed"]]
           for r in rows if r["batch"] == batches[0] and r["regime"] == regimes[0]]
    lines += ["### weight memory (bytes)", "",
              markdown_table(mem, ["layer", "nonzeros", "entries", "entry bits", "dense fp32", "torch CSR",
                                   "scipy CSR", "compressed", "dense / compressed"]), ""]
    return summary, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--regimes", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
    parser.add_argument("--repeat", type=int, default=60, help="timed calls per method at batch 1")
    parser.add_argument("--models", nargs="*", type=pathlib.Path, default=[],
                        help="compressed files for the end-to-end batch-1 comparison")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: dense fp16 cuBLAS vs cuSPARSE CSR vs the Triton kernel")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "eie_layers.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    machine = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "numba_threads": numba.get_num_threads(), "torch": torch.__version__, "numba": numba.__version__,
               "scipy": scipy.__version__}
    rows = []
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
        for name in args.layers:
            rows += bench_layer_gpu(name, LAYERS[name], args.batches, args.repeat, rng)
        summary = {f"batch{b}_gpu": {"geomean_speedup_over_dense": {
            m: geomean(r["speedup_over_dense"][m] for r in rows if r["batch"] == b) for m in GPU_METHODS},
            "faster_than_cusparse": [r["layer"] for r in rows if r["batch"] == b
                                     and r["latency_us"]["compressed"] < r["latency_us"]["cusparse_csr_fp16"]]}
            for b in args.batches}
        text = markdown_table([[r["layer"], r["batch"], *(r["latency_us"][m] for m in GPU_METHODS),
                                r["speedup_over_dense"]["compressed"]] for r in rows],
                              ["layer", "batch", "dense fp16 µs", "cuSPARSE CSR µs", "compressed µs",
                               "speedup vs dense"])
        print(text)
        print(json.dumps(summary, indent=1))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "layers": rows, "summary": summary}, indent=2))
        return
    for name in args.layers:
        rows += bench_layer(name, LAYERS[name], args.batches, args.repeat, args.regimes, rng)
    summary, text = summarise(rows, args.batches, args.regimes)
    models = bench_models(args.models, max(50, args.repeat), args.data_dir) if args.models else []
    if models:
        text += "\n### end to end, batch 1 (median µs per image)\n\n" + markdown_table(
            [[pathlib.Path(m["file"]).name, m["latency_us"]["dense"], m["latency_us"]["compressed"], m["speedup"],
              m["same_prediction"]] for m in models],
            ["file", "dense decoded", "compressed runtime", "speedup", "same prediction"]) + "\n"
    print(text)
    for key, s in summary.items():
        print(f"{key}: geomean speedup of the compressed kernel over dense {s['geomean_speedup_over_dense']['compressed']:.2f}×, "
              f"faster than torch CSR on {len(s['faster_than_torch_csr'])}/{len(args.layers)} layers, "
              f"dense wins on {s['dense_wins'] or 'none'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "layers": rows, "summary": summary, "models": models},
                                    indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
