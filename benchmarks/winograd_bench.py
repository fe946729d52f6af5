"""Winograd convolution: accuracy against a float64 reference and speed against
torch.nn.functional.conv2d on VGG-style 3×3 layers.

Accuracy: 64 → 64 channels, 32×32 input, random normal data and weights; maximum
absolute error of direct convolution, F(2×2,3×3) and F(4×4,3×3) in fp32 and fp16 against
float64 direct convolution, and relative to the output scale.  Speed: median latency
over repeated runs, measured side by side, at batch 1 and 8.

Usage::

    python benchmarks/winograd_bench.py --json runs/bench/winograd.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl.nn.winograd import WinogradConv2d  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 14)]       # (channels in = out, spatial) of VGG-16 stages


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "winograd.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    w = torch.randn(64, 64, 3, 3, dtype=torch.float64) / 24
    x = torch.randn(1, 64, 32, 32, dtype=torch.float64)
    reference = F.conv2d(x, w, padding=1)
    scale = reference.abs().max().item()
    accuracy = []
    for dtype in (torch.float32, torch.float16):
        row = {"dtype": str(dtype).replace("torch.", "")}
        row["direct"] = (F.conv2d(x.to(dtype), w.to(dtype), padding=1).double() - reference).abs().max().item()
        for tile in (2, 4):
            layer = WinogradConv2d(w.to(dtype), padding=1, tile=tile)
            row[f"F({tile}x{tile},3x3)"] = (layer(x.to(dtype)).double() - reference).abs().max().item()
        accuracy.append(row)
    speed = []
    for channels, size in SHAPES:
        for batch in (1, 8):
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
            xb = torch.randn(batch, channels, size, size)
            f2, f4 = WinogradConv2d.from_conv(conv, 2), WinogradConv2d.from_conv(conv, 4)
            with torch.no_grad():
                direct = median_ms(lambda: F.conv2d(xb, conv.weight, conv.bias, padding=1), args.repeat)
                t2 = median_ms(lambda: f2(xb), args.repeat)
                t4 = median_ms(lambda: f4(xb), args.repeat)
            speed.append({"channels": channels, "size": size, "batch": batch, "direct_ms": direct,
                          "f2_ms": t2, "f4_ms": t4})
            print(f"{channels}ch {size}×{size} batch {batch}: conv2d {direct:.2f} ms, F(2) {t2:.2f} ms, "
                  f"F(4) {t4:.2f} ms", flush=True)
    text = markdown_table([[r["dtype"], r["direct"], r["F(2x2,3x3)"], r["F(4x4,3x3)"],
                            r["F(2x2,3x3)"] / scale, r["F(4x4,3x3)"] / scale] for r in accuracy],
                          ["dtype", "direct max abs err", "F(2×2,3×3)", "F(4×4,3×3)", "F(2) / output scale",
                           "F(4) / output scale"])
    text += "\n\n" + markdown_table(
        [[f"{r['channels']}→{r['channels']}, {r['size']}×{r['size']}", r["batch"], r["direct_ms"], r["f2_ms"],
          r["f4_ms"], r["direct_ms"] / r["f2_ms"], r["direct_ms"] / r["f4_ms"]] for r in speed],
        ["layer", "batch", "conv2d ms", "F(2) ms", "F(4) ms", "F(2) speedup", "F(4) speedup"])
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"output_scale": scale, "accuracy": accuracy, "speed": speed,
                                     "torch_threads": torch.get_num_threads()}, indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
