"""Deep Compression targets on Fashion-MNIST: ratio and accuracy of LeNet-300-100 and LeNet-5.

For each network the dense model is trained once by the library's own trainer (the
baseline "uncompressed network trained by the same code"), then the whole pipeline
(prune + retrain → k-means weight sharing + centroid training → Huffman coding) is
run from that checkpoint for several sparsity / bit settings.  Every ratio is fp32
bytes of all parameters over the bytes of the whole file, and every compressed
accuracy is measured on the model decoded from the file.

Reported per network: the best ratio whose accuracy is within 0.5 points of the dense
baseline, the accuracy drop of the best setting at or above the paper's ratio (40×
for LeNet-300-100, 39× for LeNet-5), the stage-by-stage table of the best setting,
and the ratio-vs-accuracy curve (``ratio_accuracy.png``).

Usage::

    python benchmarks/deep_compression.py --networks lenet300 lenet5 --out-dir runs/bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import platform
import sys
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data, models, train  # noqa: E402
from efficientdl.compress import pipeline, validate  # noqa: E402
from efficientdl.report import layer_table, markdown_table, plots, stage_table  # noqa: E402

PAPER_RATIO = {"lenet300": 40.0, "lenet5": 39.0}

# (label, per-layer sparsity, bits) — from conservative to aggressive.
SWEEPS = {
    "lenet300": [
        ("s90-b5", {"fc1": 0.90, "fc2": 0.90, "fc3": 0.70}, {"Linear": 5}),
        ("s92-b4", {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, {"Linear": 4}),
        ("s93-b4", {"fc1": 0.93, "fc2": 0.92, "fc3": 0.76}, {"Linear": 4}),
        ("s94-b4", {"fc1": 0.94, "fc2": 0.93, "fc3": 0.78}, {"Linear": 4}),
        ("s95-b4", {"fc1": 0.95, "fc2": 0.94, "fc3": 0.80}, {"Linear": 4}),
        ("s96-b3", {"fc1": 0.96, "fc2": 0.95, "fc3": 0.80}, {"Linear": 3}),
    ],
    "lenet5": [
        ("s90-b8/5", {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81}, {"Conv2d": 8, "Linear": 5}),
        ("s93-b6/4", {"conv1": 0.40, "conv2": 0.90, "fc1": 0.94, "fc2": 0.85}, {"Conv2d": 6, "Linear": 4}),
        ("s95-b5/4", {"conv1": 0.45, "conv2": 0.92, "fc1": 0.96, "fc2": 0.88}, {"Conv2d": 5, "Linear": 4}),
    ],
}


def run_network(name: str, args: argparse.Namespace, out: pathlib.Path) -> dict:
    base = yaml.safe_load((ROOT / "efficientdl" / "recipes" / f"{name}.yaml").read_text())
    train.set_seed(base.get("seed", 0))
    ds = data.load("fashion-mnist", data_dir=args.data_dir, batch_size=base.get("batch_size", 128), fallback=False,
                   train_subset=args.train_subset)
    ckpt = out / f"{name}-dense.pt"
    if ckpt.exists() and args.reuse:
        dense = train.load_checkpoint(ckpt)
    else:
        dense = models.create(name)
        d = base["dense"]
        train.Trainer(ds.train, ds.test, epochs=d["epochs"], lr=d["lr"], weight_decay=d.get("weight_decay", 5e-4),
                      seed=base.get("seed", 0), progress=args.progress).fit(dense, description=f"{name} dense")
        train.save_checkpoint(dense, ckpt)
    dense_acc = train.evaluate(dense, ds.test)
    print(f"{name}: dense accuracy {100 * dense_acc:.2f}%", flush=True)
    sweep = [s for s in SWEEPS[name] if not args.only or s[0] in args.only]
    runs = []
    for label, sparsity, bits in sweep:
        recipe_dict = copy.deepcopy(base)
        recipe_dict["prune"]["sparsity"] = sparsity
        recipe_dict["quantize"]["bits"] = bits
        if args.epochs_scale != 1.0:
            for stage in ("prune", "quantize"):
                recipe_dict[stage]["epochs"] = max(1, round(recipe_dict[stage]["epochs"] * args.epochs_scale))
        recipe = validate(recipe_dict, f"{name}:{label}")
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        result = pipeline.run(model, ds.train, ds.test, recipe, pretrained=True, progress=args.progress,
                              log=lambda m: print(f"  [{label}] {m}", flush=True))
        report = result.to_dict()
        report["label"], report["seconds"] = label, time.perf_counter() - start
        (out / f"{name}-{label.replace('/', '_')}.edlz").write_bytes(result.file_bytes)
        runs.append(report)
        print(f"{name} {label}: {report['ratio']:.1f}×, accuracy {100 * report['accuracy_compressed']:.2f}% "
              f"({report['accuracy_drop_points']:+.2f} points drop) in {report['seconds']:.0f} s", flush=True)
    within = [r for r in runs if r["accuracy_drop_points"] <= 0.5]
    at_paper = [r for r in runs if r["ratio"] >= PAPER_RATIO[name]]
    best_within = max(within, key=lambda r: r["ratio"]) if within else None
    best_at_paper = min(at_paper, key=lambda r: r["accuracy_drop_points"]) if at_paper else None
    return {"network": name, "dense_accuracy": dense_acc, "paper_ratio": PAPER_RATIO[name], "runs": runs,
            "best_within_half_point": best_within and best_within["label"],
            "best_at_paper_ratio": best_at_paper and best_at_paper["label"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["lenet300", "lenet5"], choices=sorted(SWEEPS))
    parser.add_argument("--only", nargs="*", help="run only these setting labels")
    parser.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--json", type=pathlib.Path, help="default OUT_DIR/deep_compression.json")
    parser.add_argument("--data-dir")
    parser.add_argument("--train-subset", type=int, help="smoke runs only: train on N images")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="smoke runs only: scale retraining epochs")
    parser.add_argument("--reuse", action="store_true", help="reuse a dense checkpoint from OUT_DIR")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--merge", nargs="+", type=pathlib.Path,
                        help="no runs: merge the JSON results of earlier runs into one summary and plot")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
                          f"{__import__('torch').get_num_threads()}", "networks": []}
    if args.merge:
        for path in args.merge:
            results["networks"] += json.loads(path.read_text())["networks"]
    else:
        for name in args.networks:
            results["networks"].append(run_network(name, args, out))

    lines = []
    curve, baselines = {}, {}
    for net in results["networks"]:
        name = net["network"]
        baselines[name] = net["dense_accuracy"]
        curve[name] = [(r["ratio"], r["accuracy_compressed"]) for r in net["runs"]]
        rows = [[r["label"], r["ratio"], 100 * r["accuracy_compressed"], r["accuracy_drop_points"],
                 r["compressed_bytes"]] for r in net["runs"]]
        lines += [f"## {name} (dense {100 * net['dense_accuracy']:.2f}%)", "",
                  markdown_table(rows, ["setting", "ratio ×", "accuracy %", "drop (points)", "file bytes"]), "",
                  f"- best ratio within 0.5 points: {net['best_within_half_point']}",
                  f"- best accuracy at ≥ {net['paper_ratio']:.0f}×: {net['best_at_paper_ratio']}", ""]
        best = next((r for r in net["runs"] if r["label"] == (net["best_within_half_point"] or net["best_at_paper_ratio"])), None)
        if best:
            lines += [f"### {name} {best['label']}: stage by stage", "", stage_table(best["stages"]), "",
                      layer_table(best["stages"]), ""]
    plots.ratio_accuracy(curve, out / "ratio_accuracy.png", baselines)
    summary = "\n".join(lines)
    print(summary)
    (out / "deep_compression.md").write_text(summary)
    (args.json or out / "deep_compression.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
