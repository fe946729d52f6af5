"""Data-parallel training throughput on CPU: LeNet-5, one process vs two (DDP over gloo),
one thread per process, the same global batches; accuracy of the result.

Usage::

    python benchmarks/data_parallel.py --json runs/bench/data_parallel.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _dense import fashion_tensors  # noqa: E402
from efficientdl import models, train  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from efficientdl.train.parallel import data_parallel_train  # noqa: E402


def lenet5() -> torch.nn.Module:
    return models.create("lenet5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "data_parallel.json")
    args = parser.parse_args()
    torch.set_num_threads(1)                     # one thread per process, in both runs
    ds, x, y = fashion_tensors(args.steps * args.global_batch)
    rows = []
    for world in (1, 2):
        timing = {}
        state = data_parallel_train(lenet5, x, y, args.global_batch, args.steps, lr=0.02, world_size=world,
                                    timing=timing)
        model = lenet5()
        model.load_state_dict(state)
        rows.append({"processes": world, "seconds": timing["seconds"],
                     "samples_per_s": args.steps * args.global_batch / timing["seconds"],
                     "accuracy": train.evaluate(model, ds.test)})
    speedup = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    text = markdown_table([[r["processes"], r["seconds"], r["samples_per_s"], 100 * r["accuracy"]] for r in rows],
                          ["processes (1 thread each)", "seconds", "samples / s", "test accuracy %"])
    text += f"\n\nspeedup of 2 processes: {speedup:.2f}× ({args.steps} steps of global batch {args.global_batch})"
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": rows, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
