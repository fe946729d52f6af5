"""``edl``: the command line.  Each command parses arguments, calls the public API and renders.

Bad input (a wrong path, a corrupt file, a bad recipe, an out-of-range number) ends
with one line on standard error and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import EdlError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class UsageError(EdlError):
    """A command-line argument is wrong."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _scalar(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def per_layer_spec(text: str) -> Any:
    """Parse ``0.9`` or ``fc1=0.92,fc2=0.91,default=0.8`` into a number or a mapping."""
    if "=" not in text:
        return _scalar(text)
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, got {text!r}")
        spec[key.strip()] = _scalar(value.strip())
    return spec


def _methods() -> tuple[str, ...]:
    from ..compress.methods import METHODS

    return METHODS


def _method_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in _methods()]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r} "
                                         f"(expected some of {', '.join(_methods())})")
    return names


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 or v > 16 for v in values):
        raise argparse.ArgumentTypeError(f"expected bit widths in 1..16, got {text!r}")
    return values


def _output_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, expected an output file path")
    if not p.parent.exists():
        raise UsageError(f"{p.parent}: output directory does not exist")
    return p


def _output_dir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{p}: exists and is not a directory")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _input_file(path: str) -> Path:
    """An existing, readable regular file (a FIFO or device would block or never end)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, expected a file")
    if not p.is_file():
        raise UsageError(f"{p}: is not a regular file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror or e})") from None
    return p


# --------------------------------------------------------------------------- shared pieces
def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _load_data(args: argparse.Namespace, name: str | None = None):
    from .. import data

    ds = data.load(name or args.data, data_dir=args.data_dir, batch_size=args.batch_size,
                   train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed)
    if not args.json:
        _console().print(f"data: {ds.name} ({ds.source})")
    return ds


def _is_container(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"EDLZ"
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None


def _load_model(path: Path):
    """A plain model from a checkpoint (``.pt``) or a compressed file (``.edlz``)."""
    from .. import format as fmt
    from ..train import load_checkpoint

    return fmt.load(path) if _is_container(path) else load_checkpoint(path)


def _emit(args: argparse.Namespace, result: dict, text: str) -> None:
    from ..report import dumps

    if args.json:
        print(dumps(result))
    else:
        print(text)


def _trainer(args: argparse.Namespace, ds, teacher=None, **overrides):
    from ..train import Trainer

    opts = dict(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                schedule=args.schedule, precision=getattr(args, "precision", "fp32"),
                warmup_epochs=getattr(args, "warmup_epochs", 0.0), clip_grad_norm=getattr(args, "clip_grad_norm", None),
                optimizer=getattr(args, "optimizer", "sgd"))
    opts.update(overrides)
    return Trainer(ds.train, ds.test, seed=args.seed, progress=not (args.no_progress or args.json),
                   teacher=teacher, **opts)


def _seed(args: argparse.Namespace) -> None:
    from ..train import set_seed

    set_seed(args.seed)


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    out = _output_file(args.output)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:     # launched by torchrun: one process of the group
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
        try:
            _train_process(dist.get_rank(), dist.get_world_size(), args, str(out))
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return 0
    if args.nproc_per_node > 1:
        from ..train.parallel import spawn

        _load_data(argparse.Namespace(**{**vars(args), "json": True}))   # fail on bad data before spawning
        spawn(_train_process, args.nproc_per_node, args, str(out))
        return 0
    _train_process(0, 1, args, str(out))
    return 0


def _train_process(rank: int, world_size: int, args: argparse.Namespace, out: str) -> None:
    """Train on this process's share of every batch (DDP when ``world_size > 1``); rank 0 reports."""
    import torch

    from .. import models
    from ..train import evaluate, save_checkpoint
    from ..train.parallel import ShardedLoader

    _seed(args)
    quiet = rank > 0
    if quiet:
        args.no_progress, args.json = True, True
    ds = _load_data(args)
    model = models.create(args.model, num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    net = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
        ds.train = ShardedLoader(ds.train, rank, world_size)
    history = _trainer(args, ds).fit(net, description=args.model)
    if rank == 0:
        acc = evaluate(model, ds.test)
        save_checkpoint(model, out)
        _emit(args, {"model": args.model, "accuracy": acc, "checkpoint": out, "history": history,
                     "processes": world_size},
              f"{args.model}: test accuracy {100 * acc:.2f}% → {out}"
              + (f" ({world_size} processes, data parallel)" if world_size > 1 else ""))


def cmd_distill(args: argparse.Namespace) -> int:
    import copy

    from .. import models
    from ..train import evaluate, save_checkpoint
    from ..train.distill import TeacherEnsemble

    out = _output_file(args.output)
    teachers = [_load_model(_input_file(t)).eval() for t in args.teacher]
    _seed(args)
    ds = _load_data(args)
    teacher = teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers, args.temperature)
    student = models.create(args.model, num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    hard = copy.deepcopy(student)
    result = {"model": args.model, "train_size": ds.train.dataset_size,
              "teacher_accuracy": [evaluate(t, ds.test) for t in teachers]}
    _trainer(args, ds, teacher=teacher, kd_temperature=args.temperature, kd_alpha=args.alpha).fit(
        student, description="distilled student")
    result["student_accuracy"] = evaluate(student, ds.test)
    save_checkpoint(student, out)
    text = (f"teachers: {', '.join(f'{100 * a:.2f}%' for a in result['teacher_accuracy'])}; student on "
            f"{result['train_size']} images with soft targets (T = {args.temperature}, α = {args.alpha}): "
            f"{100 * result['student_accuracy']:.2f}% → {out}")
    if args.baseline:
        _trainer(args, ds).fit(hard, description="hard-label student")
        result["hard_label_accuracy"] = evaluate(hard, ds.test)
        text += f"\nthe same student on the same images with hard labels only: {100 * result['hard_label_accuracy']:.2f}%"
    _emit(args, result, text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..report import markdown_table
    from ..train.sweep import grid, sweep

    _load_data(argparse.Namespace(**{**vars(args), "json": True}))     # bad data fails before the pool starts
    fixed = {"model": args.model, "data": args.data, "data_dir": args.data_dir, "momentum": args.momentum,
             "schedule": args.schedule, "seed": args.seed, "train_subset": args.train_subset,
             "test_subset": args.test_subset}
    configs = [{**fixed, **c} for c in grid(lr=args.lrs, weight_decay=args.weight_decays,
                                              batch_size=args.batch_sizes, epochs=args.epochs_list)]
    results = sweep(configs, args.jobs)
    rows = [[r["lr"], r["weight_decay"], r["batch_size"], r["epochs"], 100 * r["accuracy"]] for r in results]
    text = markdown_table(rows, ["lr", "weight decay", "batch", "epochs", "test accuracy %"])
    best = results[0]
    text += (f"\n\nbest: lr {best['lr']}, weight decay {best['weight_decay']}, batch {best['batch_size']}, "
             f"{best['epochs']} epochs → {100 * best['accuracy']:.2f}% ({len(results)} runs, "
             f"{min(args.jobs or os.cpu_count() or 1, len(results))} at a time)")
    _emit(args, {"runs": results, "best": best}, text)
    return 0


def cmd_dsd(args: argparse.Namespace) -> int:
    import copy

    from .. import models
    from ..train import save_checkpoint
    from ..train.dsd import dense_baseline, dsd

    out = _output_file(args.output)
    _seed(args)
    ds = _load_data(args)
    model = models.create(args.model, num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    initial = copy.deepcopy(model)
    trainer = _trainer(args, ds)
    result = dsd(model, trainer, args.sparsity, tuple(args.phase_epochs), args.lr, args.redense_lr_scale)
    save_checkpoint(model, out)
    text = (f"{args.model} DSD: dense {100 * result['dense']:.2f}% → sparse ({100 * args.sparsity:.0f}% pruned) "
            f"{100 * result['sparse']:.2f}% → re-dense {100 * result['redense']:.2f}%  → {out}")
    if args.baseline:
        result["baseline"] = dense_baseline(initial, _trainer(args, ds), sum(args.phase_epochs), args.lr)
        text += f"\ndense baseline, {sum(args.phase_epochs)} epochs: {100 * result['baseline']:.2f}%"
    result.pop("history")
    _emit(args, {"model": args.model, "checkpoint": str(out), **result}, text)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .. import compress
    from ..train import evaluate, save_checkpoint

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    if args.sparsity is None and args.quality is None:
        raise UsageError("give exactly one of --sparsity and --quality (both only as per-layer NAME=VALUE lists)")
    if args.sparsity is not None and args.quality is not None and not (
            isinstance(args.sparsity, dict) and isinstance(args.quality, dict)):
        raise UsageError("give exactly one of --sparsity and --quality (both only as per-layer NAME=VALUE lists)")
    _seed(args)
    model = _load_model(src)
    ds = _load_data(args)
    before = evaluate(model, ds.test)
    teacher = copy.deepcopy(model).eval() if args.distill else None
    trainer = _trainer(args, ds, teacher=teacher)
    retrain = (lambda m, step: trainer.fit(m, description=f"prune {step}/{args.steps}")) if args.epochs else None
    model, report = compress.prune(model, sparsity=args.sparsity, quality=args.quality, steps=args.steps,
                                   schedule=args.sparsity_schedule, retrain=retrain)
    report.accuracy_before, report.accuracy_after = before, evaluate(model, ds.test)
    save_checkpoint(model, out)
    lines = [f"accuracy {100 * before:.2f}% → {100 * report.accuracy_after:.2f}%  → {out}"]
    lines += [f"  {name}: sparsity {100 * s:.1f}%" for name, s in report.settings["sparsity"].items()]
    _emit(args, report.to_dict(), "\n".join(lines))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .. import compress
    from ..train import evaluate, save_checkpoint

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    _seed(args)
    model = _load_model(src)
    ds = _load_data(args)
    before = evaluate(model, ds.test)
    trainer = _trainer(args, ds)
    if args.method != "kmeans":
        return _quantize_linear(args, model, ds, trainer, before, out)
    finetune = (lambda m: trainer.fit(m, description="centroids")) if args.epochs else None
    bits = args.bits if args.bits is not None else {"Conv2d": 8, "Linear": 5}
    model, report = compress.share(model, bits=bits, init=args.init, seed=args.seed, finetune=finetune)
    report.accuracy_before, report.accuracy_after = before, evaluate(model, ds.test)
    save_checkpoint(model, out)
    _emit(args, report.to_dict(),
          f"accuracy {100 * before:.2f}% → {100 * report.accuracy_after:.2f}% with bits {report.settings['bits']} → {out}")
    return 0


def _quantize_linear(args: argparse.Namespace, model, ds, trainer, before: float, out: Path) -> int:
    """``edl quantize --method fixed-point|int8``: calibrate, optionally fine-tune, freeze."""
    from ..compress.quantization import fixed_point
    from ..compress.layers import compressible_tensors
    from ..train import evaluate, save_checkpoint

    scheme = "fixed" if args.method == "fixed-point" else "affine"
    weight_bits = args.bits if args.bits is not None else 8
    activation_bits = None if args.activation_bits == 0 else args.activation_bits
    layers = fixed_point.quantize_linear(model, ds.train, scheme=scheme, weight_bits=weight_bits,
                                         activation_bits=activation_bits, per_channel=not args.per_tensor,
                                         num_batches=args.calibration_batches)
    calibrated = evaluate(model, ds.test)
    if args.epochs:
        trainer.fit(model, description="fine-tune (quantized forward)")
    fixed_point.freeze(model)
    after = evaluate(model, ds.test)
    save_checkpoint(model, out)
    quantized = {f"{name}.weight" if name else "weight" for name, e in layers.items() if e["weight"]}
    left_dense = [t.param_name for t in compressible_tensors(model) if t.param_name not in quantized]
    result = {"method": args.method, "layers": layers, "left_dense": left_dense, "accuracy_before": before,
              "accuracy_calibrated": calibrated, "accuracy_after": after, "output": str(out)}
    text = (f"accuracy {100 * before:.2f}% → {100 * calibrated:.2f}% calibrated"
            + (f" → {100 * after:.2f}% fine-tuned" if args.epochs else "") + f" ({args.method}) → {out}")
    for name, entry in layers.items():
        w, a = entry["weight"], entry["input"]
        describe = (lambda q: "fp32" if q is None else f"{q['bits']}-bit " + (
            f"fl={q['frac_bits'][0]}" if q["scheme"] == "fixed" else
            f"{'per-channel' if q['axis'] is not None else 'per-tensor'}"))
        text += f"\n  {name}: weights {describe(w)}, inputs {describe(a)}"
    if left_dense:
        text += f"\n  left dense (not a layer's weight matrix): {', '.join(left_dense)}"
    _emit(args, result, text)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from ..compress.pipeline import parameter_bytes_fp32
    from ..report import markdown_table

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    model = _load_model(src)
    layers = fmt.save(model, out, index_bits=args.index_bits, coding=args.coding)
    size = out.stat().st_size
    original = parameter_bytes_fp32(model)
    rows = [[r.name, r.kind, r.weights, 100 * r.density, r.size_bytes, r.ratio] for r in layers]
    text = markdown_table(rows, ["tensor", "kind", "weights", "density %", "bytes", "ratio ×"])
    text += f"\n\n{out}: {size:,} bytes, {original / size:.1f}× smaller than {original:,} fp32 bytes"
    _emit(args, {"path": str(out), "size_bytes": size, "original_bytes": original, "ratio": original / size,
                 "layers": [r.to_dict() for r in layers]}, text)
    return 0


def _write_pipeline_outputs(result, out_dir: Path, name: str) -> dict:
    from .. import format as fmt
    from ..report import dumps, markdown_report, plots

    model_path = out_dir / f"{name}.edlz"
    fmt.atomic_write(model_path, result.file_bytes)
    report = result.to_dict()
    report["file"] = str(model_path)
    (out_dir / "plots").mkdir(exist_ok=True)
    plots.weight_histograms(result.snapshots, out_dir / "plots" / "weight_histograms.png")
    fmt.atomic_write(out_dir / "report.json", dumps(report).encode())
    fmt.atomic_write(out_dir / "report.md", markdown_report(report, f"Deep Compression of {name}").encode())
    return report


def cmd_compress(args: argparse.Namespace, recipe_path: Path | None = None, out_dir: Path | None = None) -> int:
    from .. import models
    from ..compress import load_recipe, pipeline
    from ..report import layer_table, stage_table

    recipe = load_recipe(recipe_path or _input_file(args.recipe))
    out_dir = out_dir or _output_dir(args.output or f"runs/{Path(recipe.path).stem}")
    _seed(args)
    r = recipe.data
    if getattr(args, "resume", False):      # refuse foreign checkpoints before any data is read
        pipeline.check_resume(out_dir / "checkpoints", recipe)
    if args.checkpoint:
        model = _load_model(_input_file(args.checkpoint))
    else:
        model = None
    if args.data is None:
        args.data = r.get("data", "fashion-mnist")
    if args.batch_size is None:
        args.batch_size = r.get("batch_size", 128)
    ds = _load_data(args)
    if model is None:
        model = models.create(r["model"], num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    console = _console()
    start = time.perf_counter()
    result = pipeline.run(model, ds.train, ds.test, recipe, pretrained=args.checkpoint is not None,
                          progress=not (args.no_progress or args.json),
                          log=(lambda *_: None) if args.json else (lambda m: console.print(m)),
                          meta={"data": ds.name}, checkpoint_dir=out_dir / "checkpoints",
                          resume=getattr(args, "resume", False))
    name = r["model"] if not args.checkpoint else Path(args.checkpoint).stem
    report = _write_pipeline_outputs(result, out_dir, name)
    report["seconds"] = time.perf_counter() - start
    text = "\n".join([stage_table(report["stages"]), "", layer_table(report["stages"]), "",
                      f"{report['file']}: {report['compressed_bytes']:,} bytes, {report['ratio']:.1f}× smaller; "
                      f"accuracy {100 * report['accuracy_original']:.2f}% → {100 * report['accuracy_compressed']:.2f}%; "
                      f"report in {out_dir}/report.md ({report['seconds']:.0f} s)"])
    _emit(args, report, text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    recipe = RECIPES_DIR / "lenet300.yaml"
    if not recipe.is_file():
        raise UsageError(f"{recipe}: the demo recipe is missing from the source tree")
    args.checkpoint = None
    return cmd_compress(args, recipe, _output_dir(args.output or "runs/demo"))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate

    from .. import format as fmt

    src = _input_file(args.file)
    recorded = None
    if _is_container(src):
        container = fmt.read(src)
        model = fmt.load(container, runtime=args.runtime)
        meta = container.header.get("meta")
        recorded = meta.get("data") if isinstance(meta, dict) else None
    elif args.runtime != "dense":
        raise UsageError(f"{src}: --runtime {args.runtime} needs a compressed file, not a checkpoint")
    else:
        model = _load_model(src)
    if args.data is None:  # the dataset the file was compressed on, when it says
        args.data = recorded if isinstance(recorded, str) else "fashion-mnist"
    ds = _load_data(args)
    acc = evaluate(model, ds.test)
    result = {"file": str(src), "data": ds.name, "accuracy": acc, "test_size": ds.test.dataset_size,
              "runtime": args.runtime}
    text = f"{src}: accuracy {100 * acc:.2f}% on {ds.name} ({ds.test.dataset_size} test images, {args.runtime} runtime)"
    if args.runtime == "compressed":
        result["layers"] = model.edl_runtime
        text += f"\ncomputed from compressed form: {', '.join(model.edl_runtime['compressed']) or 'none'}"
        if model.edl_runtime["dense"]:
            text += f"\nleft dense: {', '.join(model.edl_runtime['dense'])}"
    _emit(args, result, text)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from ..report import markdown_table

    d = fmt.info(_input_file(args.file))
    rows = [[t["name"], t["kind"], t["weights"], 100 * t["density"], t["weight_bits"], t["index_bits"],
             t["entries"], t["size_bytes"]] for t in d["tensors"]]
    arch = d["arch"] or {}
    text = "\n".join([
        f"{d['path']}: efficientdl compressed file, format version {d['format_version']}",
        f"architecture: {arch.get('name', 'none recorded')} {arch.get('kwargs', '')}",
        f"size: {d['size_bytes']:,} bytes; fp32 parameters: {d['original_bytes']:,} bytes; ratio {d['ratio']:.1f}×",
        "", markdown_table(rows, ["tensor", "kind", "weights", "density %", "weight bits", "index bits",
                                  "entries", "bytes"])])
    if args.runtime:
        from ..nn import runtime_memory

        model = fmt.load(_input_file(args.file), runtime="compressed")
        d["runtime"] = runtime_memory(model)
        rows = [[m["name"], "×".join(map(str, m["shape"])), m["entries"], m["entry_bits"], m["partitions"],
                 m["dense_bytes"], m["weight_bytes"], m["ratio"]] for m in d["runtime"]]
        text += "\n\nresident weight memory of the compressed runtime:\n\n" + markdown_table(
            rows, ["layer", "out×in", "entries", "entry bits", "partitions", "dense fp32 bytes", "resident bytes",
                   "dense / resident"])
    _emit(args, d, text)
    return 0


def cmd_hw_formats(args: argparse.Namespace) -> int:
    from ..hardware import STANDARD_FORMATS, get_format, load_table
    from ..hardware.energy import HOROWITZ_45NM
    from ..report import markdown_table

    formats = list(STANDARD_FORMATS) + [get_format(name) for name in args.fixed]
    table = load_table(args.energy_table) if args.energy_table else HOROWITZ_45NM
    rows = []
    for f in formats:
        rows.append([f.name, f.bits, f"{f.min_value:.6g}", f"{f.max_value:.6g}", f"{f.min_positive:.3g}",
                     f"{f.epsilon:.3g}", f"{f.decimal_digits:.1f}",
                     *(("—" if v is None else v) for v in (f.energy_pj("add", table), f.energy_pj("mult", table),
                                                         f.area_um2("add", table), f.area_um2("mult", table)))])
    text = markdown_table(rows, ["format", "bits", "min", "max", "smallest > 0", "epsilon", "decimal digits",
                                 "add pJ", "mult pJ", "add µm²", "mult µm²"])
    text += f"\n\nenergy and area: {table.source}"
    _emit(args, {"formats": [f.summary() for f in formats], "energy_table": table.name}, text)
    return 0


def cmd_hw_roofline(args: argparse.Namespace) -> int:
    from ..hardware import devices as devs
    from ..hardware import roofline as rl
    from ..report import markdown_table, plots

    device = devs.get_device(args.device)
    out_dir = _output_dir(args.output)
    points, rows, result = [], [], {"device": device.name, "batch": args.batch, "precision": args.precision}
    roofs = {}
    if args.model is None:  # the TPU paper's figure: its six applications on TPU, K80 and Haswell
        result["applications"] = []
        for name in ("tpu-v1", "k80", "haswell"):
            d = devs.DEVICES[name]
            precision = "int8" if "int8" in d.peak_ops else "fp32"
            roofs[name] = (d.peak(precision), d.bandwidth_bytes_per_s)
            for app, intensity in rl.TPU_APPLICATIONS.items():
                pt = rl.application_point(app, intensity, d, precision)
                points.append((app, name, pt.intensity_weight, pt.attainable_ops))
                rows.append([name, app, intensity, pt.attainable_ops / 1e12, pt.bound])
                result["applications"].append({"device": name, "name": app, "intensity": intensity,
                                               "attainable_tops": pt.attainable_ops / 1e12, "bound": pt.bound})
        header = ["device", "application", "ops / weight byte", "attainable TOPS", "bound"]
        title = "TPU paper applications (Jouppi et al. ISCA'17)"
    else:
        roofs[device.name] = (device.peak(args.precision), device.bandwidth_bytes_per_s)
        src, workloads = _workloads(args)
        result["layers"] = []
        for label, layers in workloads.items():
            for layer in layers:
                pt = rl.layer_point(layer, device, args.batch, args.precision, useful_only=label == "compressed")
                name = layer.name if len(workloads) == 1 else f"{layer.name} → {label}"
                points.append((name, device.name, pt.intensity_weight, pt.attainable_ops))
                rows.append([label, layer.name, layer.weight_bytes, pt.ops, pt.intensity_weight,
                             pt.intensity_total, pt.attainable_ops / 1e12, pt.bound, pt.time_s * 1e6])
                result["layers"].append({"storage": label, **layer.to_dict(), "ops": pt.ops,
                                         "intensity_weight": pt.intensity_weight,
                                         "intensity_total": pt.intensity_total,
                                         "attainable_tops": pt.attainable_ops / 1e12, "bound": pt.bound,
                                         "time_us": pt.time_s * 1e6})
        header = ["storage", "layer", "weight bytes", "ops", "ops / weight byte", "ops / byte (all)",
                  "attainable TOPS", "bound", "time µs"]
        title = f"{src.name} on {device.name}, batch {args.batch}, {args.precision}"
    plots.roofline(roofs, points, out_dir / "roofline.png", title)
    text = markdown_table(rows, header) + f"\n\nplot: {out_dir / 'roofline.png'}"
    _emit(args, result, text)
    return 0


def _workloads(args: argparse.Namespace) -> tuple[Path, dict]:
    """Dense (and, for a compressed file, compressed) workloads of the model in ``args.model``."""
    from .. import format as fmt
    from ..compress.workload import file_workload, model_workload

    src = _input_file(args.model)
    model = _load_model(src)            # a bad file is reported before any data is read
    ds = _load_data(args)
    x = next(iter(ds.test))[0][:1]
    if _is_container(src):
        return src, {"dense": model_workload(model, x), "compressed": file_workload(src, x)}
    return src, {"dense": model_workload(model, x)}


def cmd_hw_energy(args: argparse.Namespace) -> int:
    from ..hardware.energy import HOROWITZ_45NM, inference_energy, load_table
    from ..report import markdown_table, plots

    table = load_table(args.energy_table) if args.energy_table else HOROWITZ_45NM
    src, workloads = _workloads(args)
    out_dir = _output_dir(args.output)
    result = {"file": str(src), "batch": args.batch, "on_chip_bytes": args.on_chip_kib * 1024,
              "arithmetic": args.arithmetic, "energy_table": table.name, "storage": {}}
    for label, layers in workloads.items():
        e = inference_energy(layers, args.batch, args.on_chip_kib * 1024, args.arithmetic, table,
                             skip_zeros=label == "compressed")
        result["storage"][label] = e.to_dict() | {"weight_bytes": sum(l.weight_bytes for l in layers)}
    rows = [[label, d["weight_bytes"], "yes" if d["weights_on_chip"] else "no", d["arithmetic_pj"] / 1e3,
             d["on_chip_pj"] / 1e3, d["dram_pj"] / 1e3, d["total_pj"] / 1e3] for label, d in result["storage"].items()]
    text = markdown_table(rows, ["storage", "weight bytes", "weights on chip", "arithmetic nJ", "on-chip nJ",
                                 "DRAM nJ", "total nJ"])
    if "compressed" in result["storage"]:
        result["ratio"] = result["storage"]["dense"]["total_pj"] / result["storage"]["compressed"]["total_pj"]
        text += f"\n\ndense / compressed energy: {result['ratio']:.1f}×"
    plots.energy_bars(result["storage"], out_dir / "energy.png",
                      f"{src.name}: batch {args.batch}, {args.arithmetic}, {args.on_chip_kib} KiB on chip")
    text += f"\nmodel: {table.source}; weights read once per batch, from SRAM if all fit on chip, else DRAM"
    text += f"\nplot: {out_dir / 'energy.png'}"
    _emit(args, result, text)
    return 0


def cmd_hw_systolic(args: argparse.Namespace) -> int:
    from ..hardware.systolic import SystolicConfig, simulate_layers
    from ..report import markdown_table

    from ..hardware.devices import get_device

    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else get_device(args.device).bandwidth_bytes_per_s
    config = SystolicConfig(rows=args.rows, cols=args.cols, clock_hz=args.clock_mhz * 1e6,
                            bandwidth_bytes_per_s=bandwidth)
    src, workloads = _workloads(args)
    layers = simulate_layers(workloads["dense"], args.batch, config)
    total_cycles = sum(r["total_cycles"] for r in layers)
    macs = sum(r["m"] * r["k"] * r["n"] for r in layers)
    result = {"file": str(src), "batch": args.batch, "config": config.__dict__, "layers": layers,
              "total_cycles": total_cycles, "latency_us": total_cycles / config.clock_hz * 1e6,
              "utilisation": macs / (total_cycles * config.rows * config.cols) if total_cycles else 0.0}
    rows = [[r["name"], f"{r['m']}×{r['k']}×{r['n']}", r["tiles"], r["compute_cycles"], r["stall_cycles"],
             r["total_cycles"], 100 * r["utilisation"], r["bound"]] for r in layers]
    text = markdown_table(rows, ["layer", "M×K×N", "tiles", "compute cycles", "stall cycles", "total cycles",
                                 "utilisation %", "bound"])
    text += (f"\n\n{config.rows}×{config.cols} array at {args.clock_mhz:g} MHz, {bandwidth / 1e9:g} GB/s: "
             f"{result['latency_us']:.1f} µs per batch of {args.batch}, utilisation {100 * result['utilisation']:.2f}%")
    _emit(args, result, text)
    return 0


def _eie_layers(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The layers ``edl hw eie`` simulates: benchmark layers by name, or a compressed file's fc layers."""
    from ..hardware import eie

    if args.source == "random":
        if not args.shape:
            raise UsageError("random needs --shape IN OUT")
        cols, rows = args.shape
        codes, codebook, act = eie.random_layer(rows, cols, args.weight_density, args.activation_density,
                                                seed=args.seed)
        return [{"name": f"random {cols}×{rows}", "codes": codes, "codebook": codebook, "bias": None,
                 "activations": act}], []
    names = list(eie.BENCHMARK_LAYERS) if args.source == "all" else [args.source]
    if all(n in eie.BENCHMARK_LAYERS for n in names):
        out = []
        for i, name in enumerate(names):
            cols, rows, wd, ad, paper_us, reference_us = eie.BENCHMARK_LAYERS[name]
            codes, codebook, act = eie.random_layer(rows, cols, wd, ad, seed=args.seed + i)
            out.append({"name": name, "codes": codes, "codebook": codebook, "bias": None, "activations": act,
                        "paper_us": paper_us, "reference_us": reference_us})
        return out, []
    src = Path(args.source)
    if not src.exists():
        raise UsageError(f"{src}: no such file, and not a benchmark layer "
                         f"(one of {', '.join(eie.BENCHMARK_LAYERS)}, or all)")
    from ..compress.workload import shared_fc_layers

    from .. import format as fmt

    src = _input_file(args.source)
    fmt.read(src)                       # a bad file is reported before any data is read
    ds = _load_data(args)
    return shared_fc_layers(src, next(iter(ds.test))[0])


def cmd_hw_eie(args: argparse.Namespace) -> int:
    import numpy as np

    from ..hardware import eie
    from ..report import markdown_table, plots

    options = {"pes": args.pes, "fifo_depth": args.fifo_depth, "sram_line_bits": args.sram_line_bits,
               "clock_hz": args.clock_mhz * 1e6}
    eie.EIEConfig(**options)                      # a bad option fails before any work
    layers, skipped = _eie_layers(args)
    out_dir = _output_dir(args.output)
    results, rows = [], []
    fifo_series, pe_speedup, pe_eff = {}, {}, {}
    for layer in layers:
        config = eie.config_for_codebook(len(layer["codebook"]), **options)
        encoded = eie.encode_layer(layer["codes"], layer["codebook"], config, layer["bias"])
        r = eie.simulate(encoded, layer["activations"], config)
        dense = np.asarray(layer["codebook"], np.float64)[layer["codes"]] @ np.maximum(layer["activations"], 0)
        if layer["bias"] is not None:
            dense = dense + layer["bias"]
        error = float(np.abs(r.output - dense).max() / max(1e-30, np.abs(dense).max()))
        d = {"name": layer["name"], "rows": encoded.rows, "cols": encoded.cols,
             "weight_density": float(np.count_nonzero(layer["codes"]) / max(1, layer["codes"].size)),
             "activation_density": float(np.mean(np.asarray(layer["activations"]) > 0)),
             **r.summary(), "max_rel_error": error,
             "paper_us": layer.get("paper_us"), "reference_us": layer.get("reference_us")}
        results.append(d)
        ref = f"{d['reference_us']:.1f} / {d['paper_us']:.1f}" if d["reference_us"] else "–"
        rows.append([d["name"], f"{d['cols']}×{d['rows']}", 100 * d["weight_density"], 100 * d["activation_density"],
                     d["cycles"], d["latency_us"], ref, d["efficiency"], d["utilisation"],
                     d["energy_total_pj"] / 1e3, f"{error:.1e}"])
        if args.sweep:
            fifo_series[d["name"]] = [(depth, eie.simulate(encoded, layer["activations"], eie.config_for_codebook(
                len(layer["codebook"]), **(options | {"fifo_depth": depth}))).efficiency)
                for depth in (2, 4, 8, 16, 32, 64, 128, 256)]
            base_cycles, speed, eff = None, [], []
            for pes in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                cfg = eie.config_for_codebook(len(layer["codebook"]), **(options | {"pes": pes}))
                rp = eie.simulate(eie.encode_layer(layer["codes"], layer["codebook"], cfg, layer["bias"]),
                                  layer["activations"], cfg)
                base_cycles = base_cycles or rp.cycles
                speed.append((pes, base_cycles / rp.cycles))
                eff.append((pes, rp.efficiency))
            pe_speedup[d["name"]], pe_eff[d["name"]] = speed, eff
            d["sweep"] = {"fifo_efficiency": fifo_series[d["name"]], "pe_speedup": speed, "pe_efficiency": eff}
    text = markdown_table(rows, ["layer", "in×out", "weight %", "act %", "cycles", "µs", "C++ sim / paper µs",
                                 "efficiency", "utilisation", "energy nJ", "max rel error"])
    text += (f"\n\n{args.pes} PEs, FIFO depth {args.fifo_depth}, {args.clock_mhz:g} MHz; "
             "efficiency = effective non-zeros / PEs / cycles; error vs dense float64 math")
    if skipped:
        text += f"\nnot simulated (EIE runs weight-shared fc layers): {', '.join(skipped)}"
    if args.sweep and results:
        plots.curves(fifo_series, out_dir / "eie_fifo_depth.png", "activation FIFO depth", "load-balance efficiency",
                     "EIE: efficiency vs FIFO depth", xscale="log", percent_y=True)
        plots.curves(pe_speedup, out_dir / "eie_pe_speedup.png", "processing elements", "speedup over 1 PE",
                     "EIE scalability", xscale="log", percent_y=False)
        plots.curves(pe_eff, out_dir / "eie_pe_efficiency.png", "processing elements", "load-balance efficiency",
                     "EIE scalability: efficiency", xscale="log", percent_y=True)
        text += f"\nplots: {out_dir}/eie_fifo_depth.png, eie_pe_speedup.png, eie_pe_efficiency.png"
    _emit(args, {"config": {"pes": args.pes, "fifo_depth": args.fifo_depth, "clock_mhz": args.clock_mhz,
                            "sram_line_bits": args.sram_line_bits}, "layers": results, "skipped": skipped}, text)
    return 0


def cmd_hw_compare(args: argparse.Namespace) -> int:
    from ..hardware import devices as devs
    from ..hardware import eie
    from ..hardware.compare import compare
    from ..report import markdown_table, plots

    src = _input_file(args.model)
    if not _is_container(src):
        raise UsageError(f"{src}: hw compare needs a compressed file (EIE runs the compressed layers)")
    args.source = str(src)
    fc_layers, _ = _eie_layers(args)
    if not fc_layers:
        raise UsageError(f"{src}: no weight-shared fully connected layer to compare on")
    latency_s = energy_j = 0.0
    for layer in fc_layers:
        cfg = eie.config_for_codebook(len(layer["codebook"]), pes=args.pes)
        r = eie.simulate(eie.encode_layer(layer["codes"], layer["codebook"], cfg, layer["bias"]),
                         layer["activations"], cfg)
        latency_s += r.latency_us * 1e-6
        energy_j += sum(r.energy_pj.values()) * 1e-12
    _, workloads = _workloads(args)
    names = {layer["name"] for layer in fc_layers}
    dense = [w for w in workloads["dense"] if w.name in names]
    compressed = [w for w in workloads["compressed"] if w.name in names]
    rows = compare(dense, compressed, latency_s, energy_j, devs.get_device(args.cpu), devs.get_device(args.gpu),
                   devs.get_device("tpu-v1"), args.batch, eie_label=f"cycle-level model, {args.pes} PEs")
    out_dir = _output_dir(args.output)
    plots.comparison_bars([r["platform"] for r in rows], [r["speedup"] for r in rows],
                          [r["energy_efficiency"] for r in rows], out_dir / "compare.png",
                          f"{src.name}: layers {', '.join(sorted(names))}, batch {args.batch}")
    text = markdown_table([[r["platform"], r["method"], r["latency_us"], r["throughput_per_s"], r["energy_uj"],
                            r["speedup"], r["energy_efficiency"]] for r in rows],
                          ["platform", "how", "latency µs (batch)", "inferences / s", "energy µJ / inference",
                           "speedup", "energy efficiency"])
    text += (f"\n\nlayers: {', '.join(sorted(names))} (EIE runs fully connected layers); "
             "speedup and efficiency relative to CPU dense; CPU/GPU: roofline × TDP estimates"
             f"\nplot: {out_dir / 'compare.png'}")
    _emit(args, {"file": str(src), "batch": args.batch, "layers": sorted(names), "platforms": rows}, text)
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from .. import models
    from ..compress import load_recipe
    from ..compress.pipeline import check_against_model

    src = _input_file(args.recipe)
    recipe = load_recipe(src)
    if args.checkpoint:
        model = _load_model(_input_file(args.checkpoint))
    else:
        try:
            model = models.create(recipe.data["model"])
        except EdlError as e:
            raise UsageError(f"{recipe.where('model')}: {e}") from None
    check_against_model(recipe, model)
    stages = [s for s in ("dense", "prune", "quantize", "encode") if recipe.data.get(s) is not None]
    _emit(args, {"recipe": str(src), "valid": True, "model": recipe.data["model"], "stages": stages},
          f"{src}: valid recipe for {recipe.data['model']} (stages: {', '.join(stages)})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Every inference method on one trained model: size, accuracy, MACs, latency, Pareto plot."""
    from ..compress.methods import compare_methods, pareto_front
    from ..report import markdown_table, plots

    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    _seed(args)
    model = _load_model(src)
    ds = _load_data(args)
    network = (getattr(model, "edl_arch", None) or {}).get("name") or src.stem
    say = (lambda line: None) if args.json or args.no_progress else (lambda line: print(line, file=sys.stderr))
    rows = compare_methods(model, ds.train, ds.test, methods=args.methods, epochs=args.epochs, lr=args.lr,
                           sparsity=args.sparsity, seed=args.seed, out_dir=out_dir / "files",
                           latency_repeat=args.latency_repeat, progress=say)
    front = pareto_front(rows)
    plots.pareto({network: rows}, out_dir / "pareto.png", {network: front})
    result = {"network": network, "methods": rows, "pareto_front": front}
    (out_dir / "compare.json").write_text(json.dumps(result, indent=2))
    text = markdown_table([[r["method"], 100 * r["accuracy"], r["file_bytes"], r["ratio"], r["macs"],
                            r["latency_us"], r["latency_ratio"], r["runtime"]] for r in rows],
                          ["method", "accuracy %", "file bytes", "ratio ×", "MACs (non-zero)", "latency µs",
                           "speedup ×", "runtime"])
    text += f"\n\nPareto front (size vs accuracy): {', '.join(front)}\nplot: {out_dir / 'pareto.png'}"
    (out_dir / "compare.md").write_text(text + "\n")
    _emit(args, result, text)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .. import compress
    from ..report import markdown_table, plots
    from ..train import evaluate

    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    model = _load_model(src)
    ds = _load_data(args)
    curves = compress.sensitivity(model, lambda m: evaluate(m, ds.test), sparsities=args.sparsities,
                                  layers=args.layers)
    chosen = compress.sparsities_from_sensitivity(curves, args.max_drop / 100.0)
    plots.sensitivity(curves, out_dir / "sensitivity.png")
    result = {"curves": curves, "suggested_sparsity": chosen, "max_drop_points": args.max_drop}
    (out_dir / "sensitivity.json").write_text(json.dumps(result, indent=2))
    rows = [[f"{100 * s:.0f}%"] + [100 * dict(curves[n])[s] for n in curves] for s in args.sparsities]
    text = markdown_table(rows, ["sparsity"] + [f"{n} acc %" for n in curves])
    text += "\n\nsuggested sparsity (drop ≤ {:.2f} points): {}".format(
        args.max_drop, ", ".join(f"{n}={s:.2f}" for n, s in chosen.items()))
    text += f"\nplot: {out_dir / 'sensitivity.png'}"
    _emit(args, result, text)
    return 0


def cmd_bits(args: argparse.Namespace) -> int:
    """How many bits do we need?  Accuracy vs bits, conv and fc layers separately, with and without pruning."""
    from .. import compress
    from ..compress.layers import layer_type
    from ..report import markdown_table, plots
    from ..train import evaluate

    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    base = _load_model(src)
    ds = _load_data(args)
    types = sorted({layer_type(m) for _, m in compress.compressible_layers(base)})
    variants = {"": base}
    if args.pruned is not None:
        pruned = _load_model(_input_file(args.pruned))
        sparsity = 1.0 - sum(int((m.weight != 0).sum()) for _, m in compress.compressible_layers(pruned)) / max(
            1, sum(m.weight.numel() for _, m in compress.compressible_layers(pruned)))
        variants[f" (pruned, {100 * sparsity:.0f}% sparse)"] = pruned
    series: dict[str, list[tuple[float, float]]] = {}
    for suffix, model in variants.items():
        for kind in types:
            points = []
            for b in args.bits:
                m = copy.deepcopy(model)
                compress.share(m, bits={kind: b}, init=args.init)
                points.append((b, evaluate(m, ds.test)))
            series[f"{kind}{suffix}"] = points
    plots.curves(series, out_dir / "bits.png", "bits per weight", "accuracy",
                 "Accuracy vs bits of weight sharing (other layers fp32)")
    result = {"series": series, "bits": args.bits}
    (out_dir / "bits.json").write_text(json.dumps(result, indent=2))
    rows = [[b] + [100 * dict(series[k])[b] for k in series] for b in args.bits]
    _emit(args, result, markdown_table(rows, ["bits"] + [f"{k} acc %" for k in series])
          + f"\n\nplot: {out_dir / 'bits.png'}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``edl`` argument parser (one sub-parser per command)."""
    from .. import __version__

    parser = _Parser(prog="edl", description="Make deep networks small, fast and energy-efficient.")
    parser.add_argument("--version", action="version", version=f"efficientdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
        if data:
            g = p.add_argument_group("data")
            g.add_argument("--data", default=None if p.prog.endswith(("compress", "demo", "eval")) else "fashion-mnist",
                           help="dataset: fashion-mnist, mnist or digits (default fashion-mnist; for eval, "
                                "the one the file was compressed on)")
            g.add_argument("--data-dir", help="directory with the IDX files (default: $EDL_DATA_DIR, "
                                              "then /usr/share/datasets/fashion-mnist)")
            g.add_argument("--batch-size", type=_positive_int,
                           default=None if p.prog.endswith(("compress", "demo")) else 128)
            g.add_argument("--train-subset", type=_positive_int, help="train on the first N images of a seeded permutation")
            g.add_argument("--test-subset", type=_positive_int, help="test on N images")
            g.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")

    def training(p: argparse.ArgumentParser, epochs: int, lr: float, weight_decay: float = 5e-4) -> None:
        g = p.add_argument_group("training")
        g.add_argument("--epochs", type=_nonneg_int, default=epochs, help=f"epochs (default {epochs})")
        g.add_argument("--lr", type=_positive_float, default=lr, help=f"learning rate (default {lr})")
        g.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                       help="sgd (with --momentum) or adam (default sgd)")
        g.add_argument("--momentum", type=_fraction, default=0.9)
        g.add_argument("--weight-decay", type=_fraction, default=weight_decay)
        g.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
        g.add_argument("--warmup-epochs", type=_nonneg_float, default=0.0,
                       help="linear learning-rate warmup over this many epochs (default 0)")
        g.add_argument("--clip-grad-norm", type=_positive_float, default=None,
                       help="clip the global gradient L2 norm to this value (default: no clipping)")
        g.add_argument("--precision", choices=["fp32", "mixed", "bf16", "fp16"], default="fp32",
                       help="fp32; mixed: fp16 model + fp32 master weights + dynamic loss scaling; "
                            "bf16 / fp16: torch.amp autocast (fp16 with a GradScaler)")

    p = sub.add_parser("train", help="train a registry model")
    p.add_argument("--model", default="lenet300", help="registry name: lenet300, lenet5 (default lenet300)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--nproc-per-node", type=_positive_int, default=1,
                   help="data-parallel processes on this machine (DDP, gloo on CPU; default 1)")
    common(p)
    training(p, 20, 0.05)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="train a student on soft targets of one or several teachers (Hinton et al.)")
    p.add_argument("--teacher", action="append", required=True,
                   help="teacher checkpoint (.pt) or compressed file (.edlz); repeat to average several")
    p.add_argument("--model", default="lenet300", help="student registry name (default lenet300)")
    p.add_argument("-o", "--output", required=True, help="student checkpoint to write (.pt)")
    p.add_argument("--temperature", type=_positive_float, default=4.0, help="softening temperature T (4)")
    p.add_argument("--alpha", type=_fraction, default=0.9, help="weight of the soft-target term (0.9)")
    p.add_argument("--baseline", action="store_true", help="also train the same student with hard labels only")
    common(p)
    training(p, 20, 0.05)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sweep", help="hyper-parameter parallel: train a grid of configurations concurrently")
    p.add_argument("--model", default="lenet300", help="registry name (default lenet300)")
    p.add_argument("--lrs", type=_float_list, default=[0.01, 0.05, 0.1], help="learning rates: 0.01,0.05,0.1")
    p.add_argument("--weight-decays", type=_float_list, default=[5e-4], help="weight decays (5e-4)")
    p.add_argument("--batch-sizes", type=_int_list, default=[128], help="batch sizes (128)")
    p.add_argument("--epochs-list", type=_int_list, default=[3], help="epochs (3)")
    p.add_argument("--jobs", type=_positive_int, help="concurrent runs (default: the cores)")
    p.add_argument("--momentum", type=_fraction, default=0.9)
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("dsd", help="Dense-Sparse-Dense training (Han et al. ICLR'17)")
    p.add_argument("--model", default="lenet300", help="registry name (default lenet300)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--sparsity", type=_fraction, default=0.5, help="sparse-phase sparsity (default 0.5)")
    p.add_argument("--phase-epochs", type=_nonneg_int, nargs=3, default=[10, 10, 10], metavar=("DENSE", "SPARSE", "REDENSE"))
    p.add_argument("--redense-lr-scale", type=_positive_float, default=0.1, help="re-dense lr = lr × this (0.1)")
    p.add_argument("--baseline", action="store_true", help="also train the dense baseline for the same total epochs")
    common(p)
    training(p, 10, 0.05)
    p.set_defaults(func=cmd_dsd)

    p = sub.add_parser("prune", help="magnitude pruning with retraining")
    p.add_argument("checkpoint", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint to write")
    p.add_argument("--sparsity", type=per_layer_spec, help="target sparsity: 0.9 or fc1=0.92,fc2=0.91,Conv2d=0.6")
    p.add_argument("--quality", type=per_layer_spec, help="threshold quality q of |w| > q·std(W), per layer as above")
    p.add_argument("--steps", type=_positive_int, default=1, help="prune → retrain rounds (default 1)")
    p.add_argument("--sparsity-schedule", choices=["gradual", "linear"], default="gradual")
    p.add_argument("--distill", action="store_true", help="retrain with soft targets of the unpruned model")
    common(p)
    training(p, 3, 0.01)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="weight sharing (k-means, trained centroids) or linear quantization "
                                         "(dynamic fixed point, int8 affine) of weights and activations")
    p.add_argument("checkpoint", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("-o", "--output", required=True, help="quantized checkpoint to write (then `edl encode`)")
    p.add_argument("--method", choices=["kmeans", "fixed-point", "int8"], default="kmeans",
                   help="kmeans: weight sharing (default); fixed-point: dynamic fixed point (Qiu et al.); "
                        "int8: affine post-training quantization")
    p.add_argument("--bits", type=per_layer_spec, default=None,
                   help="bits per weight: 5 or Conv2d=8,Linear=5 (default: that for kmeans, 8 otherwise)")
    p.add_argument("--init", choices=["linear", "density", "random"], default="linear",
                   help="kmeans: centroid initialisation")
    p.add_argument("--activation-bits", type=_nonneg_int, default=8,
                   help="fixed-point/int8: bits of each layer's input activations (0 keeps them fp32; default 8)")
    p.add_argument("--per-tensor", action="store_true", help="int8: one weight scale per tensor, not per channel")
    p.add_argument("--calibration-batches", type=_positive_int, default=16,
                   help="fixed-point/int8: training batches used to choose activation ranges (default 16)")
    common(p)
    training(p, 1, 0.001, weight_decay=0.0)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("encode", help="write the compressed file (Huffman + relative index)")
    p.add_argument("checkpoint", help="checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True, help="compressed file to write (.edlz)")
    p.add_argument("--index-bits", type=per_layer_spec, default=None,
                   help="relative index bits: 5 or Conv2d=8,Linear=5 (default)")
    p.add_argument("--coding", choices=["huffman", "fixed"], default="huffman")
    common(p, data=False)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("compress", help="the whole Deep Compression pipeline from a YAML recipe")
    p.add_argument("recipe", help="YAML recipe (see recipes/)")
    p.add_argument("--checkpoint", help="start from this trained model instead of training one")
    p.add_argument("-o", "--output", help="output directory (default runs/RECIPE)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed stage (OUTPUT/checkpoints)")
    common(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("demo", help="compress LeNet-300-100 on Fashion-MNIST end to end (recipes/lenet300.yaml)")
    p.add_argument("-o", "--output", help="output directory (default runs/demo)")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="accuracy of a compressed file or checkpoint")
    p.add_argument("file", help="compressed file (.edlz) or checkpoint (.pt)")
    p.add_argument("--runtime", choices=["dense", "compressed"], default="dense",
                   help="dense: decode to plain layers (default); compressed: compute from the sparse, "
                        "weight-shared form")
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="describe a compressed file")
    p.add_argument("file", help="compressed file (.edlz)")
    p.add_argument("--runtime", action="store_true",
                   help="also build the compressed runtime model and report its resident weight memory")
    common(p, data=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compare", help="every inference method on one trained model: file size, accuracy, "
                                        "MACs, batch-1 latency, Pareto plot")
    p.add_argument("checkpoint", help="trained checkpoint (.pt)")
    p.add_argument("-o", "--output", default="runs/methods", help="output directory (default runs/methods)")
    p.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated subset of: " + ", ".join(_methods()))
    p.add_argument("--sparsity", type=per_layer_spec, default=None,
                   help="pruning targets: 0.9 or Conv2d=0.6,Linear=0.9 (default)")
    p.add_argument("--epochs", type=_nonneg_int, default=2, help="fine-tuning epochs each method gets (default 2)")
    p.add_argument("--lr", type=_positive_float, default=0.005, help="fine-tuning learning rate (default 0.005)")
    p.add_argument("--latency-repeat", type=_positive_int, default=200, help="timed batch-1 calls per model")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sensitivity", help="per-layer pruning sensitivity (table + plot)")
    p.add_argument("checkpoint", help="trained checkpoint (.pt) or compressed file")
    p.add_argument("-o", "--output", default="runs/sensitivity", help="output directory")
    p.add_argument("--sparsities", type=_float_list, default=[0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--layers", type=lambda s: [x for x in s.split(",") if x], help="layer names (default all)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy drop in points for suggested sparsities")
    common(p)
    p.set_defaults(func=cmd_sensitivity)

    hw = sub.add_parser("hw", help="hardware models: number formats, energy, roofline, EIE, systolic array, comparison")
    hw_sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND", parser_class=_Parser, required=True)
    p = hw_sub.add_parser("formats", help="range, precision, energy and area of number formats")
    p.add_argument("--fixed", nargs="*", default=["Q7.8", "Q3.4"], help="fixed-point formats Qm.n to add")
    p.add_argument("--energy-table", help="YAML energy table (default: 45 nm, Horowitz ISSCC'14)")
    common(p, data=False)
    p.set_defaults(func=cmd_hw_formats)

    p = hw_sub.add_parser("roofline", help="operational intensity, attainable performance and bound per layer")
    p.add_argument("model", nargs="?", help="checkpoint (.pt) or compressed file (.edlz); without it, the TPU "
                                            "paper's six applications on TPU v1, K80 and Haswell")
    p.add_argument("--device", default="tpu-v1", help="tpu-v1, k80, haswell, p100, v100, h100, h200 or a YAML file")
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--precision", choices=["int8", "fp16", "bf16", "fp32"], default="int8")
    p.add_argument("-o", "--output", default="runs/roofline", help="output directory for roofline.png")
    common(p)
    p.set_defaults(func=cmd_hw_roofline)

    p = hw_sub.add_parser("energy", help="energy per inference: arithmetic, on-chip memory, DRAM (45 nm table)")
    p.add_argument("model", help="checkpoint (.pt) or compressed file (.edlz; compared with its dense form)")
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--on-chip-kib", type=_nonneg_int, default=1024, help="on-chip memory for weights (default 1024)")
    p.add_argument("--arithmetic", choices=["fp32", "fp16", "int32", "int8"], default="fp32")
    p.add_argument("--energy-table", help="YAML energy table (default: 45 nm, Horowitz ISSCC'14)")
    p.add_argument("-o", "--output", default="runs/energy", help="output directory for energy.png")
    common(p)
    p.set_defaults(func=cmd_hw_energy)

    p = hw_sub.add_parser("systolic", help="a TPU-style weight-stationary systolic array: cycles, stalls, utilisation")
    p.add_argument("model", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--rows", type=_positive_int, default=256)
    p.add_argument("--cols", type=_positive_int, default=256)
    p.add_argument("--clock-mhz", type=_positive_float, default=700.0)
    p.add_argument("--device", default="tpu-v1", help="device whose DRAM bandwidth feeds the array (default tpu-v1)")
    p.add_argument("--bandwidth-gbs", type=_positive_float, help="DRAM bandwidth, overriding --device")
    common(p)
    p.set_defaults(func=cmd_hw_systolic)

    p = hw_sub.add_parser("eie", help="cycle-level EIE simulation of a compressed file's fc layers or a benchmark layer")
    p.add_argument("source", help="compressed file (.edlz), an EIE benchmark layer (Alex-6, …, NT-LSTM), all, "
                                  "or random (with --shape and the densities)")
    p.add_argument("--shape", type=_positive_int, nargs=2, metavar=("IN", "OUT"), help="random layer size")
    p.add_argument("--weight-density", type=_fraction, default=0.1, help="random layer weight density (0.1)")
    p.add_argument("--activation-density", type=_fraction, default=0.35, help="random input density (0.35)")
    p.add_argument("--pes", type=_positive_int, default=64, help="processing elements (default 64)")
    p.add_argument("--fifo-depth", type=_positive_int, default=8, help="activation FIFO depth ≥ 2 (default 8)")
    p.add_argument("--sram-line-bits", type=_positive_int, default=64)
    p.add_argument("--clock-mhz", type=_positive_float, default=800.0)
    p.add_argument("--sweep", action="store_true", help="also sweep FIFO depth 2–256 and PEs 1–256 (plots)")
    p.add_argument("-o", "--output", default="runs/eie", help="output directory for the sweep plots")
    common(p)
    p.set_defaults(func=cmd_hw_eie)

    p = hw_sub.add_parser("compare", help="CPU, GPU, TPU and EIE side by side: latency, throughput, energy")
    p.add_argument("model", help="compressed file (.edlz)")
    p.add_argument("--batch", type=_positive_int, default=1, help="inputs per weight fetch (default 1)")
    p.add_argument("--cpu", default="haswell", help="CPU device (default haswell)")
    p.add_argument("--gpu", default="k80", help="GPU device (default k80; p100, v100, h100, h200 or YAML)")
    p.add_argument("--pes", type=_positive_int, default=64, help="EIE processing elements (default 64)")
    p.add_argument("-o", "--output", default="runs/compare", help="output directory for compare.png")
    common(p)
    p.set_defaults(func=cmd_hw_compare)

    rc = sub.add_parser("recipe", help="recipes: check one before running it")
    rc_sub = rc.add_subparsers(dest="recipe_command", metavar="RECIPE_COMMAND", parser_class=_Parser, required=True)
    p = rc_sub.add_parser("check", help="validate a recipe (keys, ranges, layer names) without running anything")
    p.add_argument("recipe", help="YAML recipe")
    p.add_argument("--checkpoint", help="check layer names against this model instead of the recipe's registry model")
    common(p, data=False)
    p.set_defaults(func=cmd_recipe_check)

    p = sub.add_parser("bits", help="how many bits do we need: accuracy vs bits (table + plot)")
    p.add_argument("checkpoint", help="trained checkpoint (.pt)")
    p.add_argument("-o", "--output", default="runs/bits", help="output directory")
    p.add_argument("--bits", type=_int_list, default=[1, 2, 3, 4, 5, 6, 8], help="bit widths (default 1..6,8)")
    p.add_argument("--pruned", help="also sweep this pruned (and retrained) checkpoint of the same network")
    p.add_argument("--init", choices=["linear", "density", "random"], default="linear")
    common(p)
    p.set_defaults(func=cmd_bits)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edl``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    command = " ".join(c for c in (args.command, getattr(args, "hw_command", None),
                                   getattr(args, "recipe_command", None)) if c)
    try:
        return args.func(args)
    except EdlError as e:
        if args.debug:
            raise
        print(f"edl {command}: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print(f"edl {command}: interrupted", file=sys.stderr)
        return 130
