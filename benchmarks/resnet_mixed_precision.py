"""ResNet-18 training throughput and short-run accuracy in fp32, TF32, our fp16 + fp32
master weights, torch.amp fp16 and torch.amp bf16 (Micikevicius et al., ICLR'18).

Fashion-MNIST padded to 32×32 (one channel), batch 256, SGD with momentum 0.9, weight
decay 5e-4 and a cosine learning rate.  The images stay on the device as one tensor, so
the data pipeline costs nothing.  For every mode, from the same initial weights:

* **throughput**: images per second of full training steps (forward, backward, update),
  the median over ``--windows`` timed windows of ``--steps`` steps after ``--warmup``
  steps, synchronising the device around each window;
* **accuracy**: test accuracy after ``--epochs`` epochs from the same seed.

Modes: ``fp32`` (TF32 off), ``tf32`` (TF32 matmul and convolution), ``fp16-master``
(:class:`~efficientdl.train.mixed_precision.MixedPrecisionOptimizer`: fp16 weights,
activations and gradients, BatchNorm in fp32, fp32 master weights, dynamic loss
scaling), ``amp-fp16`` (autocast + GradScaler) and ``amp-bf16`` (autocast, no scaling).
Channels-last memory format for every mode.  Meant for a CUDA GPU; ``--device cpu`` with
small settings is a smoke run.

Usage::

    python benchmarks/resnet_mixed_precision.py --data-dir DIR --json runs/bench/resnet_mixed_precision.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data, models, train  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from efficientdl.train.mixed_precision import LossScaler, MixedPrecisionOptimizer  # noqa: E402

MODES = ("fp32", "tf32", "fp16-master", "amp-fp16", "amp-bf16")


def padded(x: torch.Tensor) -> torch.Tensor:
    """28×28 → 32×32 with two pixels of the background value on each side."""
    return F.pad(x, (2, 2, 2, 2), value=float(x.amin()))


class Run:
    """One mode: the model, its optimizer and a ``step(x, y)`` that trains on one batch."""

    def __init__(self, mode: str, init: dict, device: torch.device, lr: float) -> None:
        self.mode, self.device = mode, device
        tf32 = mode == "tf32"
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        self.model = models.create("resnet18")
        self.model.load_state_dict(init)
        self.model.to(device, memory_format=torch.channels_last)
        self.lr = lr
        sgd = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=5e-4)  # noqa: E731
        self.mixed = None
        self.grad_scaler = None
        if mode == "fp16-master":
            self.mixed = MixedPrecisionOptimizer(self.model, sgd, LossScaler(scale=2.0 ** 15, dynamic=True))
            self.optimizer = self.mixed.optimizer
        else:
            self.optimizer = sgd(self.model.parameters())
            if mode == "amp-fp16":
                self.grad_scaler = torch.amp.GradScaler(device.type)
        self.input_dtype = torch.float16 if mode == "fp16-master" else torch.float32
        self.autocast = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(mode)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.input_dtype).contiguous(memory_format=torch.channels_last)
        if self.mixed is not None:
            self.mixed.step(lambda: F.cross_entropy(self.model(x).float(), y))
            return
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            loss = F.cross_entropy(self.model(x).float(), y)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
        self.model.eval()
        correct = 0
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(self.input_dtype).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                correct += int((self.model(xb).argmax(1) == y[i:i + batch]).sum())
        self.model.train()
        return correct / len(x)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(run: Run, x: torch.Tensor, y: torch.Tensor, batch: int, warmup: int, steps: int,
               windows: int) -> float:
    """Median images per second over ``windows`` windows of ``steps`` training steps."""
    generator = torch.Generator().manual_seed(1)
    index = torch.randint(0, len(x), (warmup + steps * windows, batch), generator=generator).to(x.device)
    for i in range(warmup):
        run.step(x[index[i]], y[index[i]])
    rates = []
    for w in range(windows):
        synchronize(run.device)
        start = time.perf_counter()
        for i in range(warmup + w * steps, warmup + (w + 1) * steps):
            run.step(x[index[i]], y[index[i]])
        synchronize(run.device)
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def train_and_test(run: Run, x, y, x_test, y_test, batch: int, epochs: int, seed: int) -> float:
    """Train ``epochs`` epochs (cosine learning rate per step) and return the test accuracy."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(x) // batch
    total = epochs * steps_per_epoch
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for s in range(steps_per_epoch):
            t = epoch * steps_per_epoch + s
            run.set_lr(0.5 * run.lr * (1 + math.cos(math.pi * t / total)))
            idx = order[s * batch:(s + 1) * batch]
            run.step(x[idx], y[idx])
    return run.accuracy(x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="accuracy run; 0 skips it")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--data-dir")
    parser.add_argument("--train-subset", type=int, help="smoke runs only")
    parser.add_argument("--test-subset", type=int, help="smoke runs only")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "resnet_mixed_precision.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    ds = data.load("fashion-mnist", data_dir=args.data_dir, fallback=False, train_subset=args.train_subset,
                   test_subset=args.test_subset)
    x, y = padded(ds.train.x).to(device), ds.train.y.to(device)
    x_test, y_test = padded(ds.test.x).to(device), ds.test.y.to(device)
    train.set_seed(0)
    init = {k: v.clone() for k, v in models.create("resnet18").state_dict().items()}
    rows = []
    for mode in args.modes:
        run = Run(mode, init, device, args.lr)
        rate = throughput(run, x, y, args.batch, args.warmup, args.steps, args.windows)
        accuracy = None
        if args.epochs:
            torch.manual_seed(0)
            run = Run(mode, init, device, args.lr)
            accuracy = train_and_test(run, x, y, x_test, y_test, args.batch, args.epochs, seed=0)
        skipped = run.mixed.scaler.skipped if run.mixed is not None else None
        rows.append({"mode": mode, "images_per_s": rate, "test_accuracy": accuracy, "skipped_steps": skipped})
        print(f"{mode:12s} {rate:10.0f} images/s" + (f"  accuracy {100 * accuracy:.2f}%" if accuracy is not None else ""),
              flush=True)
    base = next((r for r in rows if r["mode"] == "fp32"), rows[0])
    for r in rows:
        r["speedup_over_fp32"] = r["images_per_s"] / base["images_per_s"]
        r["accuracy_delta_points"] = (100 * (r["test_accuracy"] - base["test_accuracy"])
                                      if r["test_accuracy"] is not None and base["test_accuracy"] is not None else None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = markdown_table(
        [[r["mode"], r["images_per_s"], r["speedup_over_fp32"],
          "–" if r["test_accuracy"] is None else 100 * r["test_accuracy"],
          "–" if r["accuracy_delta_points"] is None else r["accuracy_delta_points"],
          "–" if r["skipped_steps"] is None else r["skipped_steps"]] for r in rows],
        ["mode", "images/s", "× fp32", "test accuracy %", "Δ vs fp32 (points)", "skipped steps"])
    text += (f"\n\nResNet-18 on {name}, batch {args.batch}, 32×32 inputs; throughput: median of {args.windows} "
             f"windows of {args.steps} steps; accuracy after {args.epochs} epochs")
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "batch": args.batch,
                                     "epochs": args.epochs, "runs": rows}, indent=2))
    args.json.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
