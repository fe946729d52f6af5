"""Every inference method on LeNet-300-100 and LeNet-5 (Fashion-MNIST): file size, ratio,
accuracy, multiplies and batch-1 CPU latency side by side, with a Pareto plot.

Each method starts from the same trained fp32 model (``--checkpoint-dir``, or trained by
the library's trainer) and gets the same fine-tuning budget
(:func:`efficientdl.compress.methods.compare_methods`).  SqueezeNet + Deep Compression is
added to the convolutional panel from the files the SqueezeNet benchmark writes, when
they exist (``--squeezenet-dense``, ``--squeezenet-file``).

Usage::

    python benchmarks/method_comparison.py --json runs/bench/method_comparison.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from efficientdl import format as fmt, train  # noqa: E402
from efficientdl.compress.methods import batch1_latency_us, compare_methods, pareto_front, stored_macs  # noqa: E402
from _dense import dense_model  # noqa: E402
from efficientdl.report import markdown_table, plots  # noqa: E402


def squeezenet_row(dense_path: pathlib.Path, file_path: pathlib.Path, ds, repeat: int) -> dict | None:
    """SqueezeNet + Deep Compression, measured like the other rows (its own fp32 size)."""
    if not (dense_path.exists() and file_path.exists()):
        return None
    dense = train.load_checkpoint(dense_path)
    decoded = fmt.load(file_path)
    example = next(iter(ds.test))[0][:1]
    original = 4 * sum(p.numel() for p in dense.parameters())
    macs, dense_macs = stored_macs(decoded, example)
    size = file_path.stat().st_size
    return {"method": "squeezenet+deep-compression", "accuracy": train.evaluate(decoded, ds.test),
            "file_bytes": size, "original_bytes": original, "ratio": original / size, "macs": macs,
            "dense_macs": dense_macs, "latency_us": batch1_latency_us(decoded, example, repeat),
            "runtime": "dense", "squeezenet_fp32_accuracy": train.evaluate(dense, ds.test)}


def render(results: dict, fronts: dict, base: dict, args: argparse.Namespace) -> None:
    """Write the tables (Markdown), the JSON and the Pareto plot."""
    text = ""
    for name, rows in results.items():
        text += f"\n\n### {name} (fp32 {100 * base[name]:.2f}%)\n\n" + markdown_table(
            [[r["method"], 100 * r["accuracy"], 100 * (base[name] - r["accuracy"]), r["file_bytes"], r["ratio"],
              r["macs"], r["latency_us"], r["latency_ratio"], r["runtime"]] for r in rows],
            ["method", "accuracy %", "drop (points)", "file bytes", "ratio ×", "MACs (non-zero)", "latency µs",
             "speedup ×", "runtime"])
        text += f"\n\nPareto front (size vs accuracy): {', '.join(fronts[name])}"
    text += (f"\n\nfine-tuning {args.epochs} epochs per method (pruning: 2 steps × {args.epochs}), lr {args.lr}; "
             f"batch-1 latency: median of {args.latency_repeat} calls per model, models interleaved, one thread")
    print(text)
    labels = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5 (and SqueezeNet)"}
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plots.pareto({labels[n]: rows for n, rows in results.items()}, args.plot,
                 {labels[n]: fronts[n] for n in results})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": results, "pareto_front": fronts, "fp32_accuracy": base}, indent=2))
    args.json.with_suffix(".md").write_text(text.strip() + "\n")


def retime(results: dict, args: argparse.Namespace) -> None:
    """Measure every model's batch-1 latency again, interleaved (one call of each model in
    turn, ``latency_repeat`` rounds), so that load from other processes hits all alike."""
    import statistics
    import time

    for name, rows in results.items():
        example = None
        callables = []
        for r in rows:
            path = (args.json.parent / "methods" / name / f"{r['method']}.edlz"
                    if r["method"] != "squeezenet+deep-compression" else args.squeezenet_file)
            model = fmt.load(path, runtime=r["runtime"]).eval()
            if example is None:
                example = torch.zeros(1, 1, 28, 28)
            callables.append(model)
        times = [[] for _ in callables]
        with torch.inference_mode():
            for _ in range(20):
                for m in callables:
                    m(example)
            for _ in range(args.latency_repeat):
                for i, m in enumerate(callables):
                    start = time.perf_counter()
                    m(example)
                    times[i].append(time.perf_counter() - start)
        for r, t in zip(rows, times):
            r["latency_us"] = 1e6 * statistics.median(t)
        for r in rows:
            r["latency_ratio"] = rows[0]["latency_us"] / r["latency_us"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=ROOT / "runs" / "bench",
                        help="where NAME-dense.pt are (trained when missing)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--latency-repeat", type=int, default=300)
    parser.add_argument("--squeezenet-dense", type=pathlib.Path, default=ROOT / "runs" / "bench" / "squeezenet-dense.pt")
    parser.add_argument("--squeezenet-file", type=pathlib.Path, default=ROOT / "runs" / "bench" / "squeezenet.edlz")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "method_comparison.json")
    parser.add_argument("--plot", type=pathlib.Path, default=ROOT / "docs" / "method_pareto.png")
    parser.add_argument("--retime", action="store_true",
                        help="no training: measure the latencies of the saved files again (on a quiet machine)")
    parser.add_argument("--add-squeezenet", action="store_true",
                        help="no training: add the SqueezeNet row to saved results")
    parser.add_argument("--only", nargs="+", metavar="METHOD",
                        help="run only these methods again and replace their rows in the saved results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)        # the compressed runtime's kernels on one thread too, like torch
    if args.retime or args.add_squeezenet or args.only:
        saved = json.loads(args.json.read_text())
        results = saved["results"]
        base = {n: rows[0]["accuracy"] for n, rows in results.items()}     # the fp32 row, decoded from its file
        for name in results if args.only else ():
            model, ds, _ = dense_model(name, args.checkpoint_dir / f"{name}-dense.pt")
            fresh = {r["method"]: r for r in compare_methods(
                model, ds.train, ds.test, methods=args.only, epochs=args.epochs, lr=args.lr, seed=0,
                out_dir=args.json.parent / "methods" / name, latency_repeat=args.latency_repeat,
                progress=lambda line: print("  " + line, flush=True))}
            results[name] = [fresh.get(r["method"], r) for r in results[name]]
        if args.add_squeezenet:
            _, ds, _ = dense_model("lenet5", args.checkpoint_dir / "lenet5-dense.pt")
            results["lenet5"] = [r for r in results["lenet5"] if r["method"] != "squeezenet+deep-compression"]
            extra = squeezenet_row(args.squeezenet_dense, args.squeezenet_file, ds, args.latency_repeat)
            if extra is None:
                raise SystemExit(f"{args.squeezenet_file} or {args.squeezenet_dense} is missing")
            results["lenet5"].append(extra)
        retime(results, args)
        render(results, {n: pareto_front(rows) for n, rows in results.items()}, base, args)
        return
    results, fronts, base = {}, {}, {}
    for name in ("lenet300", "lenet5"):
        model, ds, base[name] = dense_model(name, args.checkpoint_dir / f"{name}-dense.pt")
        print(f"{name}: fp32 {100 * base[name]:.2f}%", flush=True)
        rows = compare_methods(model, ds.train, ds.test, epochs=args.epochs, lr=args.lr, seed=0,
                               out_dir=args.json.parent / "methods" / name, latency_repeat=args.latency_repeat,
                               progress=lambda line: print("  " + line, flush=True))
        if name == "lenet5":
            extra = squeezenet_row(args.squeezenet_dense, args.squeezenet_file, ds, args.latency_repeat)
            if extra is not None:
                extra["latency_ratio"] = rows[0]["latency_us"] / extra["latency_us"]
                rows.append(extra)
        results[name] = rows
        fronts[name] = pareto_front(rows)
    retime(results, args)
    render(results, fronts, base, args)


if __name__ == "__main__":
    main()
