"""End to end: the compressed runtime against dense torch, ONNX Runtime and DeepSparse.

For each registry network (LeNet-300-100, LeNet-5, the 3-layer LSTM, ResNet-18 width 16,
MobileNetV2 width 0.5, the ViT with 64 patch tokens) at 50%, 70% and 90% unstructured
sparsity with 6-, 5- and 4-bit sharing, every weight of two or more dimensions gets a
**random** mask and random cluster indices into a random codebook (speed does not depend on
the values; accuracy is not measured here), and the dense model gets the same decoded
weights.  Then, side by side in one run, batch 1 and batch 8:

* ``dense torch``: the plain model, fp32; ``dense torch, a copy``: a copy of it, timed as
  another method — the noise floor of the comparison (where ``settle`` chose dense, the
  settled model *is* such a copy);
* ``compressed (settled)``: ``format``-style runtime (:func:`efficientdl.nn.to_runtime`),
  ``prefer="speed"``, after :func:`efficientdl.nn.settle` on one batch of that size (each
  layer's kernel measured; layers or the whole model returned to dense where dense wins);
* ``compressed (memory)``: ``prefer="memory"``, never a decoded weight in memory;
* ``ONNX Runtime fp32``: the dense model exported with ``torch.onnx`` (when installed);
* ``DeepSparse fp32 / int8``: the pruned ONNX model (when ``deepsparse`` is installed;
  ``NM_DISABLE_ANALYTICS=1``).

Times are the median over interleaved rounds (each round times every method once, in a
random order, as the median of enough calls to span 5 ms), so the machine's drift and one
method's after-effects (thread pools still spinning) hit all methods alike.  Also reported:
resident weight bytes for each runtime choice.

Usage::

    python benchmarks/runtime_e2e.py [--networks lenet300 lstm] [--sparsities 0.9] [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from efficientdl import models  # noqa: E402
from efficientdl.nn import settle, to_runtime  # noqa: E402

from _machine import set_threads  # noqa: E402

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

#: name → (registry name, kwargs, one sample's shape)
NETWORKS = {
    "lenet300": ("lenet300", {}, (1, 28, 28)),
    "lenet5": ("lenet5", {}, (1, 28, 28)),
    "lstm": ("lstm", {"num_layers": 3}, (1, 28, 28)),
    "resnet18": ("resnet18", {"width": 16, "in_channels": 1}, (1, 28, 28)),
    "mobilenetv2": ("mobilenetv2", {"width": 0.5}, (1, 28, 28)),
    "vit": ("vit", {"image_size": 56}, (1, 56, 56)),        # 7×7 patches: 64 tokens (+ the class token)
}
#: sparsity → bits of the shared codebook
BITS = {0.5: 6, 0.7: 5, 0.9: 4}


def randomly_compressed(model: torch.nn.Module, sparsity: float, bits: int, seed: int = 0):
    """Random mask + random codes of every ≥2-D weight (not position/class embeddings): the codebooks
    for the runtime, and the model's own weights set to the decoded values."""
    rng = np.random.default_rng(seed)
    books = {}
    for name, p in model.named_parameters():
        if p.dim() < 2 or "token" in name or "pos" in name:
            continue
        codes = rng.integers(1, 2 ** bits, size=p.shape) * (rng.random(p.shape) >= sparsity)
        scale = float(p.detach().std()) or 0.1
        codebook = np.concatenate([[0.0], rng.standard_normal(2 ** bits - 1) * scale]).astype(np.float32)
        with torch.no_grad():
            p.copy_(torch.from_numpy(codebook[codes]))
        books[name] = (codes, codebook)
    return books


def median_us(f, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        f()
        times.append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(times)


def onnx_sessions(dense: torch.nn.Module, example: torch.Tensor, directory: pathlib.Path, tag: str) -> dict:
    """``{method: callable}`` for ONNX Runtime fp32 and, when installed, DeepSparse fp32/int8."""
    out = {}
    try:
        import onnxruntime as ort
    except ImportError:
        return out
    path = directory / f"{tag}.onnx"
    torch.onnx.export(dense, (example,), str(path), input_names=["input"], output_names=["output"], dynamo=False,
                      opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # no spinning after a run: its threads would take the cores from the next method of the round
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": example.numpy()}
    out["ONNX Runtime fp32"] = lambda: session.run(None, feed)[0]
    try:
        from deepsparse import compile_model
    except ImportError:
        return out
    engine = compile_model(str(path), batch_size=example.shape[0], num_cores=torch.get_num_threads())
    out["DeepSparse fp32"] = lambda: engine([example.numpy()])[0]
    return out


def measure(network: str, sparsity: float, batch: int, rounds: int, calls: int, directory: pathlib.Path) -> dict:
    registry, kwargs, shape = NETWORKS[network]
    torch.manual_seed(0)
    dense = models.create(registry, **kwargs).eval()
    books = randomly_compressed(dense, sparsity, BITS[sparsity])
    example = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))
    fast = to_runtime(copy.deepcopy(dense), books, prefer="speed", cache=False)
    lean = to_runtime(copy.deepcopy(dense), books, prefer="memory", cache=False)
    with torch.no_grad():
        reference = dense(example)
        settled = settle(fast, example)
        settle(lean, example)
        error = float((fast(example) - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        error_lean = float((lean(example) - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    twin = copy.deepcopy(dense)                  # the same dense model again: the timing noise floor
    methods = {"dense torch": lambda: dense(example), "dense torch, a copy": lambda: twin(example),
               "compressed (settled)": lambda: fast(example), "compressed (memory)": lambda: lean(example)}
    peers = onnx_sessions(dense, example, directory, f"{network}-{sparsity}-{batch}")
    methods |= peers
    errors = {"compressed (settled)": error, "compressed (memory)": error_lean}
    for m, f in peers.items():
        y = torch.as_tensor(np.asarray(f()))
        errors[m] = float((y - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    times = {m: [] for m in methods}
    order = np.random.default_rng(0)
    with torch.inference_mode():
        for f in methods.values():
            f()
        first = median_us(methods["dense torch"], 3)
        calls = max(calls, int(5000 / max(first, 1.0)))   # each sample spans ≥ 5 ms of calls
        for _ in range(rounds):                  # every round in a fresh random order
            for m in order.permutation(list(methods)):
                times[m].append(median_us(methods[m], calls))
    us = {m: statistics.median(t) for m, t in times.items()}
    dense_bytes = sum(4 * int(np.prod(c.shape)) for c, _ in books.values())
    return {"network": network, "sparsity": sparsity, "bits": BITS[sparsity], "batch": batch, "latency_us": us,
            "speedup_over_dense": {m: us["dense torch"] / v for m, v in us.items()},
            "settle": {k: v for k, v in settled.items() if k != "made_dense"},
            "layers_served_compressed": len(fast.edl_runtime.served_compressed()),
            "layers": len(fast.edl_runtime.compressed),
            "resident_weight_bytes": {"dense fp32": dense_bytes,
                                      "compressed (settled)": fast.edl_runtime.resident_bytes(),
                                      "compressed (memory)": lean.edl_runtime.resident_bytes()},
            "max_relative_error": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--sparsities", nargs="+", type=float, default=list(BITS), choices=list(BITS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/runtime_e2e.json")
    args = ap.parse_args()
    info = set_threads(args.threads)
    print("random masks and codebooks (timing only); median over interleaved rounds", flush=True)
    results = []
    header = None
    with tempfile.TemporaryDirectory() as tmp:
        for network in args.networks:
            for sparsity in args.sparsities:
                for batch in args.batches:
                    r = measure(network, sparsity, batch, args.rounds, args.calls, pathlib.Path(tmp))
                    results.append(r)
                    methods = list(r["latency_us"])
                    if header != methods:
                        header = methods
                        print("| network | sparsity / bits | batch | " + " | ".join(f"{m} µs" for m in methods)
                              + " | settled vs dense | served compressed | resident bytes (dense → settled → memory)"
                              " | max error of peers |")
                        print("|---|---|---|" + "---|" * (len(methods) + 4))
                    cells = [f"{r['latency_us'][m]:.0f}" for m in methods]
                    mem = r["resident_weight_bytes"]
                    print(f"| {network} | {int(100 * sparsity)}% / {r['bits']} | {batch} | " + " | ".join(cells)
                          + f" | {r['speedup_over_dense']['compressed (settled)']:.2f}× "
                          f"({r['settle']['decision']}) | {r['layers_served_compressed']}/{r['layers']} "
                          f"| {mem['dense fp32']:,} → {mem['compressed (settled)']:,} → {mem['compressed (memory)']:,} "
                          f"| {', '.join(f'{m.split()[0]} {e:.0e}' for m, e in r['max_relative_error'].items())} |",
                          flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": info, "torch": torch.__version__, "threads": args.threads,
                               "results": results}, indent=1))
    worst = max(r["latency_us"]["compressed (settled)"] / r["latency_us"]["dense torch"] for r in results)
    floor = max(max(r["latency_us"]["dense torch, a copy"] / r["latency_us"]["dense torch"],
                    r["latency_us"]["dense torch"] / r["latency_us"]["dense torch, a copy"]) for r in results)
    print(f"\nslowest settled runtime relative to dense torch: {worst:.2f}× its latency (target ≤ 1.05×); "
          f"the same dense model timed twice differed by up to {floor:.2f}×")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
