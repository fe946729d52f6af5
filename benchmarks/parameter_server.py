"""Asynchronous SGD with a parameter server: staleness and accuracy against the number of workers.

LeNet-300-100 on 20,000 Fashion-MNIST images; the same total number of updates (600 of
batch 64, lr 0.05) split over 1, 2 and 4 workers; the staleness of each update (how many
updates landed between its fetch and its push) and the test accuracy.

Usage::

    python benchmarks/parameter_server.py --json runs/bench/parameter_server.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _dense import fashion_tensors  # noqa: E402
from efficientdl import models, train  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from efficientdl.train.parallel import parameter_server_train  # noqa: E402


def lenet() -> torch.nn.Module:
    return models.create("lenet300")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "parameter_server.json")
    args = parser.parse_args()
    ds, x, y = fashion_tensors(20000)
    rows = []
    for workers in (1, 2, 4):
        start = time.perf_counter()
        state, stats = parameter_server_train(lenet, x, y, workers=workers, steps=args.updates // workers,
                                              lr=0.05, batch=64)
        model = lenet()
        model.load_state_dict(state)
        rows.append({"workers": workers, "updates": stats["updates"], "mean_staleness": stats["mean_staleness"],
                     "max_staleness": stats["max_staleness"], "accuracy": train.evaluate(model, ds.test),
                     "seconds": time.perf_counter() - start})
    text = markdown_table([[r["workers"], r["updates"], r["mean_staleness"], r["max_staleness"], 100 * r["accuracy"],
                            r["seconds"]] for r in rows],
                          ["workers", "updates", "mean staleness", "max staleness", "test accuracy %", "seconds"])
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
