"""Convolution decomposition on LeNet-5 and tensor-train layers on LeNet-300-100
(Fashion-MNIST): parameters, MACs and accuracy before and after fine-tuning.

* LeNet-5's conv2 (20 → 50, 5×5, 12×12 input) is split by the spatial scheme (5×1 then 1×5,
  Jaderberg et al. 2014) and the channel scheme (5×5 to r channels then 1×1, the data-free
  SVD form of Zhang et al. 2015), the rank chosen by a parameter reduction of the layer.
* LeNet-300-100's fc1 (784 → 300, modes 7·7·4·4 → 3·4·5·5) becomes a TT layer (Novikov
  et al. 2015) at several TT-ranks, and fc1 and fc2 together at one rank.

Every model is then fine-tuned by the library's trainer (SGD, cosine schedule, lr 0.01);
the dense model gets the same fine-tuning as a control.  MACs are per sample, biases not
counted.

Usage::

    python benchmarks/lowrank_conv_tt.py --lenet5 runs/bench/lenet5/lenet5-dense.pt \\
        --lenet300 runs/bench/lenet300/lenet300-dense.pt --json runs/bench/lowrank_conv_tt.json
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficientdl import train  # noqa: E402
from efficientdl.compress import conv_low_rank, model_macs, tensor_train  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from _dense import dense_model  # noqa: E402

INPUT = (1, 28, 28)


def weights(model: torch.nn.Module) -> int:
    """All parameters of the model (weights, cores and biases)."""
    return sum(p.numel() for p in model.parameters())


def measure(dense, ds, compress, epochs: int) -> dict:
    """Compress a copy of ``dense``, evaluate, fine-tune, evaluate again."""
    model = copy.deepcopy(dense)
    model, report = compress(model) if compress else (model, {})
    macs = model_macs(model, INPUT)
    row = {"layers": report, "model_params": weights(model), "model_macs": sum(macs.values()),
           "accuracy_before_finetune": train.evaluate(model, ds.test)}
    start = time.perf_counter()
    train.Trainer(ds.train, ds.test, epochs=epochs, lr=0.01, seed=0, progress=False).fit(model)
    row["finetune_seconds"] = time.perf_counter() - start
    row["accuracy_after_finetune"] = train.evaluate(model, ds.test)
    return row


def table(rows: list[dict], dense_row: dict, base: float, first_columns: list[str]) -> str:
    """One markdown table: a line per setting, the fine-tuned dense control first."""
    lines = []
    for r in [dense_row] + rows:
        infos = list(r["layers"].values())
        change = [f"{sum(v[k + '_before'] for v in infos):,} → {sum(v[k + '_after'] for v in infos):,}"
                  if infos else "–" for k in ("params", "macs")]
        lines.append(r["setting"] + change + [r["model_params"], r["model_macs"], 100 * r["accuracy_before_finetune"],
                                              100 * r["accuracy_after_finetune"],
                                              100 * (base - r["accuracy_after_finetune"])])
    return markdown_table(lines, first_columns + ["layer weights", "layer MACs", "model params", "model MACs",
                                                  "accuracy %", "after fine-tune %", "drop (points)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenet5", type=pathlib.Path, help="trained LeNet-5 (default: train one)")
    parser.add_argument("--lenet300", type=pathlib.Path, help="trained LeNet-300-100 (default: train one)")
    parser.add_argument("--conv-reductions", type=float, nargs="+", default=[2, 4, 8])
    parser.add_argument("--tt-ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "lowrank_conv_tt.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = args.finetune_epochs
    result: dict = {"finetune_epochs": epochs, "lr": 0.01}

    dense, ds, base = dense_model("lenet5", args.lenet5)
    print(f"LeNet-5 dense: {100 * base:.2f}%", flush=True)
    control = measure(dense, ds, None, epochs)
    control["setting"] = ["dense + fine-tune", "–", "–"]
    conv_rows = []
    for scheme in ("spatial", "channel"):
        for reduction in args.conv_reductions:
            row = measure(dense, ds, lambda m: conv_low_rank(m, scheme, reduction={"conv2": reduction},
                                                             input_shape=INPUT), epochs)
            info = row["layers"]["conv2"]
            row.update(scheme=scheme, reduction=reduction, setting=[scheme, info["rank"],
                                                                    f"{100 * info['discarded_energy']:.1f}"])
            conv_rows.append(row)
            print(f"conv2 {scheme} rank {info['rank']}: {100 * row['accuracy_before_finetune']:.2f}% → "
                  f"{100 * row['accuracy_after_finetune']:.2f}% ({row['finetune_seconds']:.0f} s)", flush=True)
    result["lenet5"] = {"dense_accuracy": base, "dense_finetuned": control, "runs": conv_rows}
    text = "LeNet-5 conv2 (20→50, 5×5):\n\n" + table(conv_rows, control, base, ["scheme", "rank", "discarded energy %"])
    text += f"\n\ndense LeNet-5: {100 * base:.2f}%; fine-tuning {epochs} epochs, lr 0.01\n\n"

    dense, ds, base = dense_model("lenet300", args.lenet300)
    print(f"LeNet-300-100 dense: {100 * base:.2f}%", flush=True)
    control = measure(dense, ds, None, epochs)
    control["setting"] = ["dense + fine-tune", "–", "–"]
    settings = [({"fc1": r}, ["fc1"]) for r in args.tt_ranks] + [({"fc1": 8, "fc2": 8}, ["fc1", "fc2"])]
    tt_rows = []
    for ranks, layers in settings:
        row = measure(dense, ds, lambda m: tensor_train(m, ranks=ranks), epochs)
        info = row["layers"]
        row.update(ranks=ranks, setting=[" + ".join(layers), "/".join(str(ranks[n]) for n in layers),
                                         " / ".join(f"{v['relative_error']:.2f}" for v in info.values())])
        tt_rows.append(row)
        print(f"TT {ranks}: {100 * row['accuracy_before_finetune']:.2f}% → "
              f"{100 * row['accuracy_after_finetune']:.2f}% ({row['finetune_seconds']:.0f} s)", flush=True)
    result["lenet300"] = {"dense_accuracy": base, "dense_finetuned": control, "runs": tt_rows}
    text += "LeNet-300-100, TT layers (fc1 784→300 as 7·7·4·4 → 3·4·5·5):\n\n"
    text += table(tt_rows, control, base, ["layers", "TT-rank", "relative error"])
    text += f"\n\ndense LeNet-300-100: {100 * base:.2f}%; fine-tuning {epochs} epochs, lr 0.01"
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
