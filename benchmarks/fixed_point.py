"""Dynamic fixed point (Qiu et al., FPGA'16) and int8 affine post-training quantization
of weights and activations on LeNet-5 / Fashion-MNIST.

From the same trained fp32 LeNet-5 (``--checkpoint``, or trained by the library's
trainer), each setting quantizes every conv/fc weight and every layer input, with the
activation ranges (radix points, or scale and zero point) chosen on 16 training batches;
settings marked "fine-tuned" then train the latent fp32 weights with the quantizers in
the forward pass (straight-through gradient).  Each model is written to the compressed
file (integer codes + radix points / scales, Huffman coded) and its accuracy measured on
the model decoded from that file — activation quantizers included.

Usage::

    python benchmarks/fixed_point.py --checkpoint runs/bench/lenet5/lenet5-dense.pt --json runs/bench/fixed_point.json
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficientdl import format as fmt, train  # noqa: E402
from efficientdl.compress.quantization.fixed_point import freeze, quantize_linear  # noqa: E402
from _dense import dense_model  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402

# (label, scheme, weight bits, activation bits, per-channel, fine-tune)
SETTINGS = [
    ("fixed point W16/A16", "fixed", 16, 16, False, False),
    ("fixed point W8/A8", "fixed", 8, 8, False, False),
    ("fixed point W6/A8", "fixed", 6, 8, False, False),
    ("fixed point W6/A8, fine-tuned", "fixed", 6, 8, False, True),
    ("fixed point W4/A8", "fixed", 4, 8, False, False),
    ("fixed point W4/A8, fine-tuned", "fixed", 4, 8, False, True),
    ("fixed point W4/A fp32, fine-tuned", "fixed", 4, None, False, True),
    ("int8 affine per tensor (PTQ)", "affine", 8, 8, False, False),
    ("int8 affine per channel (PTQ)", "affine", 8, 8, True, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=0.002, help="fine-tuning learning rate")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "fixed_point.json")
    args = parser.parse_args()
    dense, ds, base = dense_model("lenet5", args.checkpoint)
    original_bytes = 4 * sum(p.numel() for p in dense.parameters())
    print(f"fp32 LeNet-5: {100 * base:.2f}%, {original_bytes:,} bytes", flush=True)
    rows = []
    for label, scheme, wb, ab, per_channel, finetune in SETTINGS:
        model = copy.deepcopy(dense)
        quantize_linear(model, ds.train, scheme=scheme, weight_bits=wb, activation_bits=ab, per_channel=per_channel)
        calibrated = train.evaluate(model, ds.test)
        if finetune:
            train.Trainer(ds.train, ds.test, epochs=args.epochs, lr=args.lr, weight_decay=0.0, seed=0,
                          progress=False).fit(model)
        freeze(model)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "q.edlz"
            fmt.save(model, path)
            size = path.stat().st_size
            decoded = train.evaluate(fmt.load(path), ds.test)
        rows.append({"setting": label, "scheme": scheme, "weight_bits": wb, "activation_bits": ab,
                     "per_channel": per_channel, "fine_tuned": finetune, "accuracy_calibrated": calibrated,
                     "accuracy": decoded, "drop_points": 100 * (base - decoded), "file_bytes": size,
                     "ratio": original_bytes / size})
        print(f"{label}: {100 * calibrated:.2f}% calibrated → {100 * decoded:.2f}% from the file "
              f"({size:,} bytes, {original_bytes / size:.1f}×)", flush=True)
    text = markdown_table([[r["setting"], 100 * r["accuracy_calibrated"], 100 * r["accuracy"], r["drop_points"],
                            r["file_bytes"], r["ratio"]] for r in rows],
                          ["setting", "calibrated only %", "from the file %", "drop (points)", "file bytes",
                           "ratio ×"])
    text += (f"\n\nfp32 LeNet-5: {100 * base:.2f}%, {original_bytes:,} bytes; fine-tuning {args.epochs} epochs, "
             f"lr {args.lr}; activations calibrated on 16 batches of 128 training images")
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"dense_accuracy": base, "original_bytes": original_bytes, "runs": rows},
                                    indent=2))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
