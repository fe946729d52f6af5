"""Truncated SVD of LeNet-300-100's first layer on Fashion-MNIST: parameters, FLOPs and
accuracy before and after fine-tuning, for several parameter reductions.

The dense model is trained by the library's trainer (or read from ``--checkpoint``);
fc1 (784 × 300) is replaced by ``Linear(784, r) → Linear(r, 300)``, the rank chosen by the
parameter budget, then the whole network is fine-tuned.

Usage::

    python benchmarks/lowrank.py --json runs/bench/lowrank.json
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficientdl import train  # noqa: E402
from efficientdl.compress.lowrank.svd import low_rank  # noqa: E402
from _dense import dense_model  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=pathlib.Path, help="trained LeNet-300-100 (default: train one)")
    parser.add_argument("--reductions", type=float, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "lowrank.json")
    args = parser.parse_args()
    dense, ds, base = dense_model("lenet300", args.checkpoint)
    print(f"dense: {100 * base:.2f}%", flush=True)
    rows = []
    for reduction in args.reductions:
        model = copy.deepcopy(dense)
        model, report = low_rank(model, reduction={"fc1": reduction})
        info = report["fc1"]
        before = train.evaluate(model, ds.test)
        train.Trainer(ds.train, ds.test, epochs=args.finetune_epochs, lr=0.01, seed=0, progress=False).fit(model)
        after = train.evaluate(model, ds.test)
        rows.append({"reduction": reduction, **info, "accuracy_before_finetune": before,
                     "accuracy_after_finetune": after, "drop_points": 100 * (base - after),
                     "fc1_macs_before": info["params_before"], "fc1_macs_after": info["params_after"]})
        print(f"fc1 rank {info['rank']} ({info['params_before'] / info['params_after']:.1f}× fewer): "
              f"{100 * before:.2f}% → fine-tuned {100 * after:.2f}%", flush=True)
    text = markdown_table([[r["rank"], r["params_after"], r["params_before"] / r["params_after"],
                            100 * r["discarded_energy"], 100 * r["accuracy_before_finetune"],
                            100 * r["accuracy_after_finetune"], r["drop_points"]] for r in rows],
                          ["fc1 rank", "fc1 params (= MACs)", "fewer ×", "discarded energy %", "accuracy %",
                           "after fine-tune %", "drop (points)"])
    text += f"\n\ndense LeNet-300-100: {100 * base:.2f}%; fine-tuning {args.finetune_epochs} epochs, lr 0.01"
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"dense_accuracy": base, "runs": rows}, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
