"""Mixed-precision training of LeNet-300-100 on Fashion-MNIST: fp32, our fp16 + fp32
master weights with dynamic loss scaling, the same without scaling, and torch.amp bf16 —
test accuracy, skipped steps, final scale; plus the gradient-magnitude histogram against
fp16's range (why the loss must be scaled).

Usage::

    python benchmarks/mixed_precision.py --json runs/bench/mixed_precision.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data, models, train  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from efficientdl.train.mixed_precision import (LossScaler, MixedPrecisionOptimizer, amp_step,  # noqa: E402
                                               gradient_underflow)


def accuracy(model, loader, dtype) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(dtype)).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return correct / total


def setup(label: str, lr: float):
    """``(model, mixed-precision optimizer or None, plain optimizer or None)`` for one method."""
    train.set_seed(0)
    model = models.create("lenet300")
    sgd = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9)  # noqa: E731
    if label.startswith("mixed"):
        scaler = LossScaler(scale=2.0 ** 15, dynamic=True) if "dynamic" in label else LossScaler(1.0, False)
        return model, MixedPrecisionOptimizer(model, sgd, scaler), None
    return model, None, sgd(model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--underflow-epochs", type=int, default=2)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "mixed_precision.json")
    args = parser.parse_args()
    ds = data.load("fashion-mnist", fallback=False)
    rows = []
    for label in ("fp32", "mixed, dynamic scale", "mixed, no scaling (S = 1)", "torch.amp bf16"):
        model, mp, opt = setup(label, args.lr)
        dtype = torch.float16 if mp else torch.float32
        start = time.perf_counter()
        for _ in range(args.epochs):
            for x, y in ds.train:
                if mp:
                    mp.step(lambda: F.cross_entropy(model(x.half()).float(), y))
                elif label == "fp32":
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                else:
                    amp_step(model, opt, lambda: F.cross_entropy(model(x), y), torch.bfloat16)
        seconds = time.perf_counter() - start
        acc = accuracy(model, ds.test, dtype)
        rows.append({"method": label, "accuracy": acc, "seconds": seconds,
                     "skipped_steps": mp.scaler.skipped if mp else 0, "final_scale": mp.scaler.scale if mp else None})
        print(f"{label}: {100 * acc:.2f}% in {seconds:.0f} s", flush=True)
    # a network whose gradients underflow in fp16: the loss multiplied by 2^-20 and the learning
    # rate by 2^20 — the same training in exact arithmetic (and in fp32), but the fp16 gradients
    # fall below 2^-24 unless the loss is scaled back up
    tiny = 2.0 ** -20
    underflow_rows = []
    for label in ("fp32", "mixed, no scaling (S = 1)", "mixed, dynamic scale"):
        model, mp, opt = setup(label, args.lr / tiny)
        for _ in range(args.underflow_epochs):
            for x, y in ds.train:
                if mp:
                    mp.step(lambda: F.cross_entropy(model(x.half()).float(), y) * tiny)
                else:
                    opt.zero_grad()
                    (F.cross_entropy(model(x), y) * tiny).backward()
                    opt.step()
        acc = accuracy(model, ds.test, torch.float16 if mp else torch.float32)
        underflow_rows.append({"method": label, "accuracy": acc, "skipped_steps": mp.scaler.skipped if mp else 0})
        print(f"loss × 2^-20, {label}: {100 * acc:.2f}%", flush=True)
    # why scale: gradients of a freshly initialised network on one batch, in fp32
    train.set_seed(0)
    model = models.create("lenet300")
    x, y = next(iter(ds.train))
    diag = gradient_underflow(model, F.cross_entropy(model(x), y) / 1000.0)   # a small loss, late in training
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(diag["log2_magnitudes"], bins=80, color="0.5")
    ax.axvline(diag["fp16_min_log2"], color="r", label="fp16 smallest subnormal (2⁻²⁴)")
    ax.axvline(diag["fp16_max_log2"], color="b", label="fp16 max (65504)")
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title("gradient magnitudes vs the fp16 range")
    fig.tight_layout()
    out = args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "gradient_underflow.png", dpi=110)
    text = markdown_table([[r["method"], 100 * r["accuracy"], r["skipped_steps"], r["final_scale"] or "–",
                            r["seconds"]] for r in rows],
                          ["training", "test accuracy %", "skipped steps", "final loss scale", "seconds"])
    text += "\n\nloss × 2^-20, lr × 2^20 (gradients that underflow in fp16):\n\n" + markdown_table(
        [[r["method"], 100 * r["accuracy"], r["skipped_steps"]] for r in underflow_rows],
        ["training", "test accuracy %", "skipped steps"])
    text += "\n\n" + markdown_table([[s, 100 * v["underflow"], 100 * v["overflow"]] for s, v in diag["scales"].items()],
                                    ["loss scale", "gradients flushed to zero in fp16 %", "overflowing %"])
    print(text)
    args.json.write_text(json.dumps({"runs": rows, "underflow_runs": underflow_rows, "underflow": diag["scales"],
                                     "epochs": args.epochs}, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
