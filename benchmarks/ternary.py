"""Trained ternary quantization (TTQ) against the fixed-scale ternary (TWN) and binary
baselines on LeNet-5 / Fashion-MNIST.

From the same trained fp32 LeNet-5 (the library's trainer, or ``--checkpoint``), each
method quantizes conv2 and fc1 (first and last layer kept in full precision, as in the
paper) and fine-tunes the latent weights (and TTQ's scales) for the same epochs.  The
model is then written to the compressed file (2-bit codes, Huffman coded) and its
accuracy measured on the model decoded from the file.  Reported: accuracy, drop, file
size and the ratio over fp32 parameters; for TTQ, W_p / W_n and the shares of negative,
zero and positive weights after every epoch (the paper's Figure 2, ``ttq_scales.png``).

Robustness of the comparison: ``--seeds`` repeats every method with other training
orders, ``--ttq-lr`` gives TTQ its own learning rate, ``--optimizer adam`` trains with
Adam, ``--all-layers`` ternarizes the first and last layer too.

Usage::

    python benchmarks/ternary.py --checkpoint runs/bench/lenet5-dense.pt --json runs/bench/ternary.json
    python benchmarks/ternary.py --checkpoint runs/bench/lenet5-dense.pt --methods ttq twn \\
        --ttq-lr 0.03 --seeds 0 1 2 --json runs/bench/ternary_seeds.json
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficientdl import models, train  # noqa: E402
from efficientdl import format as fmt  # noqa: E402
from efficientdl.compress.quantization.ternary import ternarize, ternary_state  # noqa: E402
from _dense import dense_model  # noqa: E402
from efficientdl.report import markdown_table, plots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=pathlib.Path)
    parser.add_argument("--methods", nargs="+", default=["ttq", "twn", "binary"], choices=["ttq", "twn", "binary"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--ttq-lr", type=float, help="TTQ's own learning rate (default: --lr)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training-order seeds; each method runs once per seed from the same fp32 model")
    parser.add_argument("--all-layers", action="store_true", help="quantize the first and last layer too")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "ternary.json")
    args = parser.parse_args()
    out = args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    dense, ds, base = dense_model("lenet5", args.checkpoint)
    original_bytes = 4 * sum(p.numel() for p in dense.parameters())
    print(f"fp32 LeNet-5: {100 * base:.2f}%, {original_bytes:,} bytes", flush=True)
    rows, trace = [], []
    for seed in args.seeds:
        ds.train.seed = seed                                # the training order
        for method in args.methods:
            lr = args.ttq_lr if method == "ttq" and args.ttq_lr else args.lr
            model = copy.deepcopy(dense)
            names = ternarize(model, method, keep_first_last=not args.all_layers)
            start = train.evaluate(model, ds.test)
            traced = method == "ttq" and seed == args.seeds[0]

            def follow(m, record, traced=traced):
                if traced:
                    trace.append({"epoch": record["epoch"], **ternary_state(m)})

            if traced:
                trace.append({"epoch": 0, **ternary_state(model)})
            train.Trainer(ds.train, ds.test, epochs=args.epochs, lr=lr, weight_decay=0.0, seed=seed,
                          optimizer=args.optimizer, progress=False).fit(model, on_epoch=follow)
            path = out / (f"lenet5-{method}.edlz" if len(args.seeds) == 1 else f"lenet5-{method}-seed{seed}.edlz")
            fmt.save(model, path, arch=dense.edl_arch if hasattr(dense, "edl_arch") else None)
            decoded = fmt.load(path, model=models.create("lenet5"))
            acc = train.evaluate(decoded, ds.test)
            size = path.stat().st_size
            kinds = {r.name: (r.kind, r.weight_bits) for r in fmt.read(path).layers}
            rows.append({"method": method, "seed": seed, "lr": lr, "layers": names, "accuracy_before_finetune": start,
                         "accuracy": acc, "drop_points": 100 * (base - acc), "file_bytes": size,
                         "ratio": original_bytes / size, "storage": {n: kinds[f"{n}.weight"] for n in names}})
            print(f"seed {seed} {method} (lr {lr}): {100 * start:.2f}% → {100 * acc:.2f}% "
                  f"({100 * (base - acc):+.2f} points), {size:,} bytes ({original_bytes / size:.1f}×)", flush=True)
    if trace:
        layers = [k for k in trace[0] if k != "epoch"]
        plots.curves({f"{n} W_p": [(t["epoch"], t[n]["wp"]) for t in trace] for n in layers}
                     | {f"{n} W_n": [(t["epoch"], t[n]["wn"]) for t in trace] for n in layers},
                     out / "ttq_scales.png", "epoch", "scale", "TTQ: learned scales", percent_y=False)
        plots.curves({f"{n} {k}": [(t["epoch"], t[n][k]) for t in trace] for n in layers
                      for k in ("negative", "zero", "positive")},
                     out / "ttq_shares.png", "epoch", "share of weights", "TTQ: negative / zero / positive")
    text = markdown_table([[r["method"], r["seed"], r["lr"], 100 * r["accuracy_before_finetune"], 100 * r["accuracy"],
                            r["drop_points"], r["file_bytes"], r["ratio"]] for r in rows],
                          ["method", "seed", "lr", "accuracy before fine-tune %", "accuracy (decoded file) %",
                           "drop (points)", "file bytes", "ratio ×"])
    means = {m: statistics.mean(r["accuracy"] for r in rows if r["method"] == m) for m in args.methods}
    text += "\n\nmean accuracy over seeds " + ", ".join(f"{m} {100 * a:.2f}%" for m, a in means.items())
    quantized = "all layers" if args.all_layers else "conv2 and fc1 quantized, conv1 and fc2 fp32"
    text += (f"\n\nfp32 LeNet-5 {100 * base:.2f}%, {original_bytes:,} bytes; {quantized}; {args.epochs} epochs, "
             f"{args.optimizer}, seeds {args.seeds}")
    if trace:
        text += "\n\n" + markdown_table([[t["epoch"], *(f"{t[n]['wp']:.3f} / {t[n]['wn']:.3f} "
                                                        f"({100 * t[n]['negative']:.0f}/{100 * t[n]['zero']:.0f}/"
                                                        f"{100 * t[n]['positive']:.0f}%)" for n in layers)]
                                         for t in trace], ["epoch", *(f"{n}: W_p / W_n (neg/zero/pos)" for n in layers)])
    print(text)
    args.json.write_text(json.dumps({"fp32_accuracy": base, "original_bytes": original_bytes, "runs": rows,
                                     "mean_accuracy": means, "ttq_trace": trace}, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
