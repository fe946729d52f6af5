"""Deep Compression of the 28×28 SqueezeNet on Fashion-MNIST: ≥ 10× smaller than its own
fp32 parameters, within 1 accuracy point of its own dense accuracy.

The dense network (``models.create("squeezenet")``, v1.1 layout, 726,474 parameters) is
trained by the library's trainer with the recipe's dense stage (SGD with momentum, a
linear learning-rate warmup, gradient-norm clipping and a cosine decay), or loaded from
``--checkpoint``.  The recipe's pipeline then prunes it iteratively with retraining,
shares its weights by k-means with centroid training, and Huffman codes the result into
a ``.edlz`` file.  The file is written, read back with :func:`efficientdl.format.load`
(the architecture rebuilt from the file) and that model is evaluated: its accuracy is
the compressed accuracy reported.  The ratio is, as in ``deep_compression.py``, the fp32
bytes of all parameters over the bytes of the whole file.

Usage::

    python benchmarks/squeezenet.py --checkpoint runs/bench/squeezenet-dense.pt --json runs/bench/squeezenet.json
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

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data, models, train  # noqa: E402
from efficientdl import format as fmt  # noqa: E402
from efficientdl.compress import load_recipe, pipeline, validate  # noqa: E402
from efficientdl.report import layer_table, markdown_table, stage_table  # noqa: E402

TARGET_RATIO = 10.0
TARGET_DROP_POINTS = 1.0


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else the platform's processor string."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dense_model(recipe: dict, ds, checkpoint: pathlib.Path, progress: bool) -> tuple[torch.nn.Module, list[dict]]:
    """The checkpoint when it exists, else SqueezeNet trained by the recipe's dense stage
    (then saved to ``checkpoint``); returns ``(model, per-epoch records)``."""
    if checkpoint.exists():
        print(f"dense: loading {checkpoint}", flush=True)
        return train.load_checkpoint(checkpoint), []
    section = recipe["dense"]
    model = models.create(recipe["model"])
    options = {k: section[k] for k in pipeline.TRAINER_KEYS if k in section}

    def report(_: torch.nn.Module, r: dict) -> None:
        if not progress:                                # the trainer prints its own lines with --progress
            print(f"dense epoch {r['epoch']}: lr {r['lr']:.4g}, loss {r['train_loss']:.4f}, "
                  f"test {100 * r['test_accuracy']:.2f}%, clipped steps {r.get('clipped_steps', 0)}, "
                  f"{r['seconds']:.0f} s", flush=True)

    history = train.Trainer(ds.train, ds.test, seed=recipe.get("seed", 0), progress=progress,
                            **options).fit(model, description="squeezenet dense", on_epoch=report)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train.save_checkpoint(model, checkpoint)
    return model, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=pathlib.Path, default=ROOT / "recipes" / "squeezenet.yaml")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=ROOT / "runs" / "bench" / "squeezenet-dense.pt",
                        help="dense model: loaded when the file exists, else trained and written there")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "squeezenet.json")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--train-subset", type=int, help="smoke runs only: train on N images")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="smoke runs only: scale every stage's epochs")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    recipe_dict = copy.deepcopy(load_recipe(args.recipe).data)
    if args.epochs_scale != 1.0:
        for stage in ("dense", "prune", "quantize"):
            recipe_dict[stage]["epochs"] = max(1, round(recipe_dict[stage]["epochs"] * args.epochs_scale))
    recipe = validate(recipe_dict, str(args.recipe))
    train.set_seed(recipe_dict.get("seed", 0))
    ds = data.load(recipe_dict.get("data", "fashion-mnist"), data_dir=args.data_dir, fallback=False,
                   batch_size=recipe_dict.get("batch_size", 128), train_subset=args.train_subset)
    print(f"data: {ds.source}; torch threads {torch.get_num_threads()}", flush=True)

    start = time.perf_counter()
    dense, dense_history = dense_model(recipe_dict, ds, args.checkpoint, args.progress)
    dense_seconds = time.perf_counter() - start
    dense_acc = train.evaluate(dense, ds.test)
    fp32_bytes = pipeline.parameter_bytes_fp32(dense)
    print(f"dense: accuracy {100 * dense_acc:.2f}%, {fp32_bytes:,} bytes of fp32 parameters", flush=True)

    start = time.perf_counter()
    model = copy.deepcopy(dense)
    result = pipeline.run(model, ds.train, ds.test, recipe, pretrained=True, progress=args.progress,
                          log=lambda m: print(f"  {m}", flush=True), meta={"data": ds.name})
    compress_seconds = time.perf_counter() - start
    path = args.json.with_suffix(".edlz")
    fmt.atomic_write(path, result.file_bytes)
    reloaded = fmt.load(path)                                   # the architecture is rebuilt from the file
    compressed_acc = train.evaluate(reloaded, ds.test)
    file_bytes = path.stat().st_size
    ratio = fp32_bytes / file_bytes
    drop = 100.0 * (dense_acc - compressed_acc)
    report = result.to_dict()
    epoch_seconds = [r["seconds"] for r in dense_history]
    summary = {
        "network": "squeezenet", "arch": dense.edl_arch, "parameters": fp32_bytes // 4,
        "machine": f"{cpu_name()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"torch threads {torch.get_num_threads()}",
        "recipe": recipe_dict, "recipe_path": str(args.recipe), "checkpoint": str(args.checkpoint),
        "train_subset": args.train_subset, "epochs_scale": args.epochs_scale,
        "dense_accuracy": dense_acc, "compressed_accuracy": compressed_acc, "drop_points": drop,
        "fp32_bytes": fp32_bytes, "file_bytes": file_bytes, "ratio": ratio, "file": str(path),
        "target": {"ratio": TARGET_RATIO, "max_drop_points": TARGET_DROP_POINTS,
                   "met": ratio >= TARGET_RATIO and drop <= TARGET_DROP_POINTS},
        "pipeline_accuracy_compressed": report["accuracy_compressed"], "bit_exact": report["bit_exact"],
        "stages": report["stages"], "layers": report["layers"],
        "dense_history": dense_history, "dense_seconds": dense_seconds if dense_history else None,
        "dense_epoch_seconds_mean": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "compress_seconds": compress_seconds,
    }
    met = "met" if summary["target"]["met"] else "NOT met"
    lines = [
        "# SqueezeNet (28×28, v1.1 layout) on Fashion-MNIST: Deep Compression", "",
        markdown_table([[100 * dense_acc, 100 * compressed_acc, drop, fp32_bytes, file_bytes, ratio]],
                       ["dense accuracy %", "compressed accuracy % (file reloaded)", "drop (points)",
                        "fp32 bytes", "file bytes", "ratio ×"]), "",
        f"Target ≥ {TARGET_RATIO:.0f}× within {TARGET_DROP_POINTS:.0f} point: **{met}**.  "
        f"{summary['parameters']:,} parameters; {summary['machine']}; recipe {args.recipe.name}.",
    ]
    if epoch_seconds:
        lines.append(f"Dense training: {len(epoch_seconds)} epochs, {summary['dense_epoch_seconds_mean']:.0f} s per "
                     f"epoch (evaluation included), {dense_seconds / 60:.1f} min.")
    lines += [f"Compression pipeline: {compress_seconds / 60:.1f} min.", "", "## Stages", "",
              stage_table(report["stages"]), "", "## Layers", "", layer_table(report["stages"]), ""]
    text = "\n".join(lines)
    print(text)
    args.json.write_text(json.dumps(summary, indent=2, default=str))
    args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
