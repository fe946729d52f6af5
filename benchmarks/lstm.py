"""Deep Compression of an LSTM reading Fashion-MNIST row by row: ≥ 10× smaller than its own
fp32 parameters, within 1 accuracy point of its own dense accuracy.

The lecture's LSTM result: Deep Compression pruned NeuralTalk's LSTM to ~10% of its
weights, and ESE pruned a speech LSTM by ~90% before quantizing it, without loss.  Here
the registry's ``lstm`` (:class:`efficientdl.models.rnn.LSTMClassifier`: 28 time steps of
28 pixels, hidden size 128, a linear classifier on the last hidden state, 82,186
parameters) is trained by the library's trainer with ``recipes/lstm.yaml``'s dense stage
(SGD with momentum, cosine decay, gradient-norm clipping), or loaded from
``--checkpoint``.  The recipe's pipeline then prunes 90% of both gate matrices
(``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``) in gradual steps with retraining, shares
the surviving weights by k-means with centroid training, and Huffman codes the result.
The ``.edlz`` file is written next to ``--json``, read back by
:func:`efficientdl.format.load` (the architecture rebuilt from the file) and evaluated.
Reported: dense accuracy, accuracy after pruning, after weight sharing and of the
decoded file, per-tensor density and bits, fp32 bytes, file bytes and the ratio; and, as
the lecture plots for LSTMs, accuracy against the fraction of the gate matrices pruned
without retraining (one-shot magnitude pruning of the dense model), next to the recipe's
pruned-and-retrained point.

Usage::

    python benchmarks/lstm.py --checkpoint runs/bench/lstm-dense.pt --json runs/bench/lstm.json
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import copy  # noqa: E402

from _recipe_bench import arguments, run, write  # noqa: E402

from efficientdl import train  # noqa: E402
from efficientdl.compress.pruning.prune import prune_once  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402

TARGET_RATIO = 10.0
TARGET_DROP_POINTS = 1.0
CURVE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def pruning_curve(dense, ds) -> dict:
    """``{"pruning_without_retraining": [[sparsity, accuracy], ...]}``: both gate matrices of
    a copy of the dense model pruned once by magnitude to each sparsity (fc kept dense)."""
    curve = []
    for sparsity in CURVE_SPARSITIES:
        model = copy.deepcopy(dense)
        prune_once(model, sparsity={"lstm.*": sparsity})
        curve.append([sparsity, train.evaluate(model, ds.test)])
        print(f"gates {100 * sparsity:.0f}% pruned, no retraining: {100 * curve[-1][1]:.2f}%", flush=True)
    return {"pruning_without_retraining": curve}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "lstm")
    summary = run("lstm", args, TARGET_RATIO, TARGET_DROP_POINTS, extra=pruning_curve)
    gates = [layer for layer in summary["layers"] if layer["name"].startswith("lstm.weight_")]
    rows = [[100 * s, 100 * a, 100 * (summary["dense_accuracy"] - a)] for s, a in summary["pruning_without_retraining"]]
    notes = ["Gate matrices: " + ", ".join(f"{g['name']} {g['weights']:,} weights at {100 * g['density']:.1f}% density"
                                           for g in gates) + ".", "",
             "## Accuracy against the fraction of the gate matrices pruned", "",
             markdown_table(rows, ["gates pruned %", "accuracy % (no retraining)", "drop (points)"]), "",
             f"With the recipe's iterative pruning and retraining: {100 * summary['pruned_accuracy']:.2f}% at "
             f"{100 * (1 - gates[0]['density']):.0f}% / {100 * (1 - gates[-1]['density']):.0f}% pruned; "
             f"after weight sharing and Huffman coding: {100 * summary['compressed_accuracy']:.2f}%.", ""]
    print(write(summary, args.json, "LSTM (28 steps × 28 pixels, hidden 128) on Fashion-MNIST: Deep Compression",
                notes))


if __name__ == "__main__":
    main()
