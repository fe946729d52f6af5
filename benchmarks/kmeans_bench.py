"""Benchmark of the k-means used for weight sharing (Deep Compression, §3).

Clusters 10 million weights (Laplace-distributed like a trained layer's) into the
``2^5 − 1 = 31`` shared values of a 5-bit layer (plus the reserved zero), on one core,
and reports the median wall time over repeats.  For quality, the same clustering is
compared on a 1-million-weight sample with scikit-learn's ``KMeans`` (Lloyd, one
thread, the same linear initial centroids): both objectives are printed.

Usage::

    python benchmarks/kmeans_bench.py --weights 10000000 --bits 5 --json kmeans.json
"""

from __future__ import annotations

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from efficientdl.compress.quantization.share import kmeans_1d  # noqa: E402


def inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of each value to its centroid."""
    return float(np.sum((x.astype(np.float64) - centroids[labels].astype(np.float64)) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=10_000_000)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=1_000_000, help="sample size for the scikit-learn comparison")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    w = rng.laplace(0.0, 0.02, args.weights).astype(np.float32)
    k = (1 << args.bits) - 1
    kmeans_1d(w[:1000], k)  # compile the numba helpers
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        centroids, labels = kmeans_1d(w, k, init="linear")
        times.append(time.perf_counter() - start)
    ours_s = statistics.median(times)

    sample = w[: args.sample]
    c_ours, l_ours = kmeans_1d(sample, k, init="linear")
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "weights": args.weights, "bits": args.bits, "clusters": k, "repeats": args.repeats,
        "seconds_median": ours_s, "seconds_all": times, "target_seconds": 2.0,
        "sample": args.sample, "inertia_ours": inertia(sample, c_ours, l_ours),
    }
    try:
        from sklearn.cluster import KMeans

        init = np.linspace(sample.min(), sample.max(), k).reshape(-1, 1)
        start = time.perf_counter()
        km = KMeans(n_clusters=k, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-7).fit(
            sample.reshape(-1, 1).astype(np.float64))
        result["sklearn_seconds_on_sample"] = time.perf_counter() - start
        result["inertia_sklearn"] = float(km.inertia_)
        start = time.perf_counter()
        kmeans_1d(sample, k)
        result["ours_seconds_on_sample"] = time.perf_counter() - start
    except ImportError:
        result["sklearn"] = "not installed"

    print(f"| k-means, {args.weights:,} weights, {k} clusters ({args.bits} bits), one core | value |")
    print("|---|---:|")
    print(f"| median seconds over {args.repeats} runs (target ≤ 2 s) | {ours_s:.3f} |")
    if "inertia_sklearn" in result:
        print(f"| objective on {args.sample:,}-weight sample: ours | {result['inertia_ours']:.6g} |")
        print(f"| objective on the sample: scikit-learn KMeans | {result['inertia_sklearn']:.6g} |")
        print(f"| seconds on the sample: ours / scikit-learn | {result['ours_seconds_on_sample']:.3f} / "
              f"{result['sklearn_seconds_on_sample']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
