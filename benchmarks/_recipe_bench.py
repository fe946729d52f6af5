"""One registry network through one recipe: dense training (or a checkpoint), the Deep
Compression pipeline, the ``.edlz`` file written, read back and evaluated.

Shared by the benchmarks that hold a single network to a "≥ R× smaller within D points"
target.  The ratio is, as in ``deep_compression.py``, the fp32 bytes of all parameters
over the bytes of the whole file; the compressed accuracy is that of the model that
:func:`efficientdl.format.load` rebuilds from the file (architecture included).
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
from typing import Any, Callable

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl import data, models, train  # noqa: E402
from efficientdl import format as fmt  # noqa: E402
from efficientdl.compress import load_recipe, pipeline, validate  # noqa: E402
from efficientdl.report import layer_table, markdown_table, stage_table  # noqa: E402
from _machine import cpu_name  # noqa: E402


def arguments(description: str, network: str) -> argparse.Namespace:
    """The common command line: ``--recipe``, ``--checkpoint``, ``--json`` (defaults named
    after ``network`` under ``recipes/`` and ``runs/bench/``), ``--data-dir``, ``--threads``,
    and the smoke-run options ``--train-subset`` and ``--epochs-scale``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", type=pathlib.Path, default=ROOT / "efficientdl" / "recipes" / f"{network}.yaml")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=ROOT / "runs" / "bench" / f"{network}-dense.pt",
                        help="dense model: loaded when the file exists, else trained and written there")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / f"{network}.json",
                        help="results; the .md table and the .edlz file are written next to it")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--train-subset", type=int, help="smoke runs only: train on N images")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="smoke runs only: scale every stage's epochs")
    parser.add_argument("--progress", action="store_true")
    return parser.parse_args()


def _print_epoch(label: str):
    def report(_: torch.nn.Module, r: dict) -> None:
        print(f"{label} epoch {r['epoch']}: lr {r['lr']:.4g}, loss {r['train_loss']:.4f}, "
              f"test {100 * r['test_accuracy']:.2f}%, clipped steps {r.get('clipped_steps', 0)}, "
              f"{r['seconds']:.1f} s", flush=True)
    return report


def run(network: str, args: argparse.Namespace, target_ratio: float, target_drop_points: float,
        extra: Callable[[torch.nn.Module, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (or load) the dense ``network``, compress it by ``args.recipe``, write and reload the file.

    Args:
        network: the registry name the recipe builds.
        args: from :func:`arguments`.
        target_ratio: the smallest acceptable ratio (fp32 parameter bytes / file bytes).
        target_drop_points: the largest acceptable accuracy drop, in points.
        extra: called with the dense model (not to be modified) and the dataset before
            compression; the mapping it returns is added to the summary.

    Returns:
        The summary written to ``args.json``: accuracies (dense, per stage, decoded file),
        byte counts, ratio, whether the target is met, per-stage and per-tensor reports,
        the dense training history and timings.
    """
    torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    recipe_dict = copy.deepcopy(load_recipe(args.recipe).data)
    if args.epochs_scale != 1.0:
        for stage in ("dense", "prune", "quantize"):
            recipe_dict[stage]["epochs"] = max(1, round(recipe_dict[stage]["epochs"] * args.epochs_scale))
    recipe = validate(recipe_dict, str(args.recipe))
    seed = recipe_dict.get("seed", 0)
    train.set_seed(seed)
    ds = data.load(recipe_dict.get("data", "fashion-mnist"), data_dir=args.data_dir, fallback=False,
                   batch_size=recipe_dict.get("batch_size", 128), train_subset=args.train_subset)
    print(f"data: {ds.source}; torch threads {torch.get_num_threads()}", flush=True)

    start, history = time.perf_counter(), []
    if args.checkpoint.exists():
        print(f"dense: loading {args.checkpoint}", flush=True)
        dense = train.load_checkpoint(args.checkpoint)
    else:
        dense = models.create(network)
        options = {k: recipe_dict["dense"][k] for k in pipeline.TRAINER_KEYS if k in recipe_dict["dense"]}
        history = train.Trainer(ds.train, ds.test, seed=seed, progress=args.progress, **options).fit(
            dense, description=f"{network} dense", on_epoch=None if args.progress else _print_epoch("dense"))
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        train.save_checkpoint(dense, args.checkpoint)
    dense_seconds = time.perf_counter() - start
    dense_acc = train.evaluate(dense, ds.test)
    fp32_bytes = pipeline.parameter_bytes_fp32(dense)
    print(f"dense: accuracy {100 * dense_acc:.2f}%, {fp32_bytes:,} bytes of fp32 parameters", flush=True)
    extras = extra(dense, ds) if extra is not None else {}

    start = time.perf_counter()
    result = pipeline.run(copy.deepcopy(dense), ds.train, ds.test, recipe, pretrained=True, progress=args.progress,
                          log=lambda m: print(f"  {m}", flush=True), meta={"data": ds.name})
    compress_seconds = time.perf_counter() - start
    path = args.json.with_suffix(".edlz")
    fmt.atomic_write(path, result.file_bytes)
    compressed_acc = train.evaluate(fmt.load(path), ds.test)        # the architecture is rebuilt from the file
    file_bytes = path.stat().st_size
    ratio, drop = fp32_bytes / file_bytes, 100.0 * (dense_acc - compressed_acc)
    report = result.to_dict()
    epoch_seconds = [r["seconds"] for r in history]
    stage_accuracy = {s["stage"]: s["accuracy_after"] for s in report["stages"]}
    return {
        "network": network, "arch": dense.edl_arch, "parameters": fp32_bytes // 4,
        "machine": f"{cpu_name()} {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__, "recipe": recipe_dict, "recipe_path": str(args.recipe),
        "checkpoint": str(args.checkpoint), "train_subset": args.train_subset, "epochs_scale": args.epochs_scale,
        "dense_accuracy": dense_acc, "pruned_accuracy": stage_accuracy.get("prune"),
        "shared_accuracy": stage_accuracy.get("quantize"), "compressed_accuracy": compressed_acc,
        "drop_points": drop, "fp32_bytes": fp32_bytes, "file_bytes": file_bytes, "ratio": ratio, "file": str(path),
        "target": {"ratio": target_ratio, "max_drop_points": target_drop_points,
                   "met": ratio >= target_ratio and drop <= target_drop_points},
        "pipeline_accuracy_compressed": report["accuracy_compressed"], "bit_exact": report["bit_exact"],
        "stages": report["stages"], "layers": report["layers"],
        "dense_history": history, "dense_seconds": dense_seconds if history else None,
        "dense_epoch_seconds_mean": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "compress_seconds": compress_seconds, **extras,
    }


def write(summary: dict[str, Any], json_path: pathlib.Path, title: str, notes: list[str] = ()) -> str:
    """Write ``summary`` as JSON and, next to it, a Markdown report (headline table, target,
    timings, the stage and per-tensor tables, then ``notes``); returns the Markdown."""
    s = summary
    met = "met" if s["target"]["met"] else "NOT met"
    pct = lambda a: None if a is None else 100 * a  # noqa: E731
    lines = [
        f"# {title}", "",
        markdown_table([[pct(s["dense_accuracy"]), pct(s["pruned_accuracy"]), pct(s["shared_accuracy"]),
                         pct(s["compressed_accuracy"]), s["drop_points"], s["fp32_bytes"], s["file_bytes"], s["ratio"]]],
                       ["dense %", "pruned %", "weight-shared %", "file reloaded %", "drop (points)",
                        "fp32 bytes", "file bytes", "ratio ×"]), "",
        f"Target ≥ {s['target']['ratio']:.0f}× within {s['target']['max_drop_points']:g} point: **{met}**.  "
        f"{s['parameters']:,} parameters; {s['machine']}; torch {s['torch']}; recipe {pathlib.Path(s['recipe_path']).name}.",
    ]
    if s["dense_history"]:
        lines.append(f"Dense training: {len(s['dense_history'])} epochs, {s['dense_epoch_seconds_mean']:.1f} s per "
                     f"epoch (evaluation included), {s['dense_seconds'] / 60:.1f} min.")
    lines += [f"Compression pipeline: {s['compress_seconds'] / 60:.1f} min.", "", "## Stages", "",
              stage_table(s["stages"]), "", "## Tensors", "", layer_table(s["stages"]), "", *notes]
    text = "\n".join(lines)
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    json_path.with_suffix(".md").write_text(text)
    return text
