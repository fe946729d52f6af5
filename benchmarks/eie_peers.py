"""The EIE benchmark layers against the inference engines, exact and int8, side by side in one run.

The nine layers of Han et al., ISCA'16 (Table III; :mod:`eie_layers`: random matrices at the
paper's weight density, 4-bit sharing, inputs at the paper's activation density), at batch
1 and batch 64.  Every method is timed in turn, in rotating rounds (:func:`eie_layers.median_us`),
on the same input, warm cache:

exact (fp32)
* ``dense torch``: ``F.linear`` on the dense weight — the baseline of every speedup;
* ``compressed``: the packed kernel (:func:`efficientdl.kernels.cpu.matmul`, both layouts; at
  batch 64 on layers wider than 512 inputs also the column-blocked twin, :func:`~efficientdl.kernels.cpu.pack_row_blocks`);
* ``ONNX Runtime fp32``: the dense layer as an ONNX ``MatMul``;
* ``DeepSparse fp32``: the same ONNX model with its zeros (DeepSparse finds the sparsity itself);
* ``MKL sparse fp32``: Intel MKL's sparse × dense product through ``sparse-dot-mkl`` (the CSR
  matrix times the input, as that package is used; ``MKL_NUM_THREADS`` threads), where installed;

int8 (activations quantized per call)
* ``compressed int8-sparse``: the packed kernels on int8 activations and the int8 codebook
  (:func:`efficientdl.kernels.cpu.matmul_int8`);
* ``torch int8 dense``: torch's dynamic int8 linear (fbgemm) on the same int8 weights;
* ``compressed int8 (dispatched)``: the runtime (``precision="int8"``) on an ``nn.Linear``,
  each shape's kernel measured by the dispatcher among all of the above of its own;
* ``ONNX Runtime int8``: the graph ``quantize_dynamic(reduce_range=True)`` writes
  (``DynamicQuantizeLinear`` → ``MatMulInteger`` → rescale; 7-bit weights), built here;
* ``DeepSparse int8``: a QDQ graph (``QuantizeLinear``/``DequantizeLinear`` around the
  ``MatMul``, the same int8 weights, the activation scale calibrated on the input, 7 bits).
  On a CPU without VNNI DeepSparse 1.8 emulates its int8 operations (it says so); measured on
  one layer, a ``QLinearMatMul`` graph ran faster but 15% off and ``NM_FAST_VNNI_EMULATION=1``
  did not help, so the accurate QDQ form is the one timed.

Reported per layer and batch: median µs, speedup over dense torch, max error relative to the
largest exact output (float64), and the geometric means.  Needs the ``bench`` extra for the
peers (``make bench-peers`` environment; ``NM_DISABLE_ANALYTICS=1``); without them only the
torch and own methods run.

Usage::

    NM_DISABLE_ANALYTICS=1 .venv-bench/bin/python benchmarks/eie_peers.py --json runs/bench/eie_peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import warnings

import numpy as np
import torch

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
warnings.filterwarnings("ignore")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficientdl.kernels import cpu  # noqa: E402
from efficientdl.nn import to_runtime  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402

from _machine import set_threads  # noqa: E402
from eie_layers import LAYERS, geomean, make_input, make_layer, median_us  # noqa: E402

EXACT = ("dense torch", "compressed", "ONNX Runtime fp32", "DeepSparse fp32", "MKL sparse fp32")
#: the exact peers the compressed kernel is compared with, layer by layer
EXACT_PEERS = ("ONNX Runtime fp32", "DeepSparse fp32", "MKL sparse fp32")
INT8 = ("compressed int8-sparse", "torch int8 dense", "compressed int8 (dispatched)", "ONNX Runtime int8",
        "DeepSparse int8")


def onnx_graphs(w: np.ndarray, w_q: np.ndarray, scale_w: float, scale_x: float, directory: pathlib.Path,
                tag: str) -> dict[str, pathlib.Path]:
    """The layer ``y = x Wᵀ`` as three ONNX files: fp32 ``MatMul``; ORT's dynamic int8 graph; a QDQ graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = w.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cols])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", rows])
    opset = [helper.make_opsetid("", 13)]
    paths = {}

    def save(name, nodes, inits):
        graph = helper.make_graph(nodes, tag, [x], [y], inits)
        model = helper.make_model(graph, opset_imports=opset)
        model.ir_version = 8
        paths[name] = directory / f"{tag}-{name}.onnx"
        onnx.save(model, str(paths[name]))

    wt = np.ascontiguousarray(w.T)
    save("fp32", [helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(wt, "w")])
    wq_t = np.ascontiguousarray(w_q.T.astype(np.int8))
    # ORT's dynamic graph quantizes the activations to the full uint8 range: with 8-bit weights the
    # AVX2 kernel's pairwise int16 sums saturate (measured: 2–4% error), so its weights get 7 bits,
    # as quantize_dynamic(reduce_range=True) gives them
    top = float(np.abs(w).max()) or 1.0
    w7_t = np.ascontiguousarray(np.rint(w.T / (top / 63)).astype(np.int8))
    save("dynamic", [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
    ], [numpy_helper.from_array(w7_t, "wq"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(top / 63, np.float32), "ws")])
    save("qdq", [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ], [numpy_helper.from_array(np.array(scale_x, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(wq_t, "wq"), numpy_helper.from_array(np.array(scale_w, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz")])
    return paths


def peer_methods(paths: dict, x: np.ndarray, threads: int) -> dict:
    out = {}
    try:
        import onnxruntime as ort
    except ImportError:
        return out
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, key in (("ONNX Runtime fp32", "fp32"), ("ONNX Runtime int8", "dynamic")):
        session = ort.InferenceSession(str(paths[key]), options, providers=["CPUExecutionProvider"])
        out[name] = (lambda s: lambda: s.run(None, {"x": x})[0])(session)
    try:
        from deepsparse import compile_model
    except ImportError:
        return out
    for name, key in (("DeepSparse fp32", "fp32"), ("DeepSparse int8", "qdq")):
        engine = compile_model(str(paths[key]), batch_size=x.shape[0], num_cores=threads)
        out[name] = (lambda e: lambda: e([x])[0])(engine)
    return out


def mkl_method(w: np.ndarray, x_cols: np.ndarray):
    """``W x`` by MKL's sparse product (``sparse-dot-mkl``) on the CSR form of ``w``, or ``None``
    when the package (or the MKL library it loads) is not installed; ``x_cols`` is ``x`` as
    columns (``(C,)`` or ``(C, n)``), as the compressed kernel gets it."""
    if "MKL_RT" not in os.environ:              # the pip wheel of MKL puts its library under the venv's lib/
        found = sorted(pathlib.Path(sys.prefix, "lib").glob("libmkl_rt.so*"))
        if found:
            os.environ["MKL_RT"] = str(found[0])
    try:
        import scipy.sparse
        from sparse_dot_mkl import dot_product_mkl
    except (ImportError, OSError):
        return None
    w_csr = scipy.sparse.csr_matrix(w.astype(np.float32))
    return lambda: dot_product_mkl(w_csr, x_cols)


def bench(name: str, batch: int, repeat: int, threads: int, rng, directory: pathlib.Path) -> dict:
    cols, rows, wd, ad = LAYERS[name]
    codes, codebook = make_layer(cols, rows, wd, rng)
    w = codebook[codes]
    x = make_input(cols, batch, ad, rng)                              # (batch, cols)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    top = float(np.abs(exact).max()) or 1.0
    packed, twin = cpu.pack(codes, codebook), cpu.pack_rows(codes, codebook)
    blocks = cpu.pack_row_blocks(codes, codebook) if batch > 1 and cols > cpu.BLOCK_COLUMNS else None
    codebook_q, scale_w = cpu.quantize_codebook(codebook)
    w_q = codebook_q[codes]
    x_cols = x[0].copy() if batch == 1 else np.ascontiguousarray(x.T)
    x_t, w_t = torch.from_numpy(x), torch.from_numpy(w)

    layer = torch.nn.Linear(cols, rows, bias=False)
    runtime = to_runtime(torch.nn.Sequential(layer), {"0.weight": (codes, codebook)}, cache=False,
                         precision="int8", settle_on_first_call=False)
    with torch.no_grad():
        runtime(x_t)                                                   # the dispatcher measures its candidates
    weight = runtime.edl_runtime.weights["0.weight"]
    (choice,) = [r.name for r in weight.chosen.values()]
    from efficientdl.nn.served import _int8_dense_weight

    int8_dense = _int8_dense_weight(weight)
    methods = {
        "dense torch": lambda: torch.nn.functional.linear(x_t, w_t),
        "compressed": lambda: cpu.matmul(packed, x_cols, twin=twin, blocks=blocks),
        "compressed int8-sparse": lambda: cpu.matmul_int8(packed, x_cols, twin=twin),
        "torch int8 dense": lambda: torch.ops.quantized.linear_dynamic(x_t, int8_dense, True),
        "compressed int8 (dispatched)": lambda: runtime(x_t),
    }
    try:
        paths = onnx_graphs(w, w_q, scale_w, float(np.abs(x).max()) / 127, directory, f"{name}-{batch}")
    except ImportError:                          # no onnx (the bench extra without DeepSparse): no peers
        paths = None
    if paths is not None:
        methods |= peer_methods(paths, x, threads)
    mkl = mkl_method(w, x_cols)
    if mkl is not None:
        methods["MKL sparse fp32"] = mkl
    errors = {}
    with torch.no_grad():
        for m, f in methods.items():
            y = np.asarray(f(), np.float64)
            column_major = m.startswith("compressed") and not m.endswith("(dispatched)") or m.startswith("MKL")
            y = y.reshape(rows, batch).T if column_major else y
            errors[m] = float(np.abs(y.reshape(batch, rows) - exact).max()) / top
        lat = median_us(methods, repeat, cold=False, block=5 if batch == 1 else 2)
    row = {"layer": name, "batch": batch, "rows": rows, "cols": cols, "weight_density": wd, "activation_density": ad,
           "latency_us": lat, "speedup_over_dense": {m: lat["dense torch"] / v for m, v in lat.items()},
           "max_rel_error": errors, "dispatched_kernel": choice,
           "dispatcher_times_us": next(iter(weight.times_us.values()))}
    print(f"{name:8s} batch {batch:2d}: " + "  ".join(f"{m} {lat[m]:.0f}" for m in lat)
          + f"  (dispatched: {choice})", flush=True)
    return row


def summarise(rows: list[dict], batches) -> tuple[dict, str]:
    methods = [m for m in EXACT + INT8 if all(m in r["latency_us"] for r in rows)]
    summary, lines = {}, []
    for batch in batches:
        sel = [r for r in rows if r["batch"] == batch]
        g = {m: geomean(r["speedup_over_dense"][m] for r in sel) for m in methods}
        worst_error = {m: max(r["max_rel_error"][m] for r in sel) for m in methods}
        exact_peers = [m for m in EXACT_PEERS if m in methods]
        summary[f"batch{batch}"] = {
            "geomean_speedup_over_dense": g, "max_rel_error": worst_error,
            "compressed_faster_than_exact_peers_on": [
                r["layer"] for r in sel
                if all(r["latency_us"]["compressed"] < r["latency_us"][p] for p in exact_peers)],
            "int8_dispatched_faster_than_deepsparse_int8_on": [
                r["layer"] for r in sel if "DeepSparse int8" in r["latency_us"]
                and r["latency_us"]["compressed int8 (dispatched)"] < r["latency_us"]["DeepSparse int8"]],
            "dispatched_kernels": {r["layer"]: r["dispatched_kernel"] for r in sel}}
        table = [[r["layer"], *(f"{r['latency_us'][m]:.0f} ({r['speedup_over_dense'][m]:.1f}×)" for m in methods),
                  r["dispatched_kernel"]] for r in sel]
        table.append(["geomean speedup", *(f"{g[m]:.2f}×" for m in methods), ""])
        table.append(["max error", *(f"{worst_error[m]:.1e}" for m in methods), ""])
        lines += [f"### batch {batch} (median µs, speedup over dense torch fp32)", "",
                  markdown_table(table, ["layer", *methods, "dispatched kernel"]), ""]
    return summary, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per method at batch 1 (a quarter at 64)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "eie_peers.json")
    args = ap.parse_args()
    info = set_threads(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)     # read when sparse-dot-mkl loads MKL
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.layers:
            for batch in args.batches:
                rows.append(bench(name, batch, args.repeat if batch == 1 else max(6, args.repeat // 4),
                                  args.threads, rng, pathlib.Path(tmp)))
    summary, text = summarise(rows, args.batches)
    print(text)
    print(json.dumps(summary, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": info, "torch": torch.__version__, "threads": args.threads,
                                     "layers": rows, "summary": summary}, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
