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
    args = parser.parse_args()
    torch.set_num_threads(1)
    results, fronts, text = {}, {}, ""
    for name in ("lenet300", "lenet5"):
        model, ds, base = dense_model(name, args.checkpoint_dir / f"{name}-dense.pt")
        print(f"{name}: fp32 {100 * base:.2f}%", flush=True)
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
        text += f"\n\n### {name} (fp32 {100 * base:.2f}%)\n\n" + markdown_table(
            [[r["method"], 100 * r["accuracy"], 100 * (base - r["accuracy"]), r["file_bytes"], r["ratio"], r["macs"],
              r["latency_us"], r["latency_ratio"], r["runtime"]] for r in rows],
            ["method", "accuracy %", "drop (points)", "file bytes", "ratio ×", "MACs (non-zero)", "latency µs",
             "speedup ×", "runtime"])
        text += f"\n\nPareto front (size vs accuracy): {', '.join(fronts[name])}"
    text += (f"\n\nfine-tuning {args.epochs} epochs per method (pruning: 2 steps × {args.epochs}), lr {args.lr}; "
             f"batch-1 latency: median of {args.latency_repeat} calls, one thread")
    print(text)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plots.pareto({"LeNet-300-100": results["lenet300"], "LeNet-5 (and SqueezeNet)": results["lenet5"]}, args.plot,
                 {"LeNet-300-100": fronts["lenet300"], "LeNet-5 (and SqueezeNet)": fronts["lenet5"]})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": results, "pareto_front": fronts}, indent=2))
    args.json.with_suffix(".md").write_text(text.strip() + "\n")


if __name__ == "__main__":
    main()
