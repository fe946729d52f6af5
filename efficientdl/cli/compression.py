"""``edl prune``, ``quantize``, ``encode``, ``compress``, ``demo``, ``compare``, ``sensitivity`` and ``bits``:
algorithms for efficient inference, one command each."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from ..errors import RecipeError

from .common import (_emit, _epoch_loggers, _float_list, _input_file, _int_list, _load_data, _load_model,
                     _method_list, _nonneg_int, _output_dir, _output_file, _console,
                     _positive_int, _seed, _trainer, add_common_options, add_log_dir_option, add_training_options,
                     methods, names,
                     packaged_recipe, packaged_recipes, pattern_spec, per_layer_spec, recipe_path)
from .common import _data_and_model, add_model_options


def _kmeans_inits() -> list[str]:
    from ..compress.quantization.share import INITS

    return names(INITS)


def _sparsity_schedules() -> list[str]:
    from ..compress.pruning.prune import SPARSITY_SCHEDULES

    return list(SPARSITY_SCHEDULES)


def _codings() -> list[str]:
    from ..format.streams import CODINGS

    return list(CODINGS)


def _pruning_methods() -> list[str]:
    from ..compress.pruning.post_training import METHODS

    return list(METHODS)


def _allocations() -> list[str]:
    from ..compress.pruning.post_training import ALLOCATIONS

    return list(ALLOCATIONS)


def _quantizers() -> list[str]:
    from ..compress.quantization import QUANTIZERS

    return QUANTIZERS.names()


# --------------------------------------------------------------------------- edl prune
def add_prune(p: argparse.ArgumentParser) -> None:
    """Options of ``edl prune``."""
    p.add_argument("checkpoint", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint to write")
    p.add_argument("--sparsity", type=per_layer_spec, help="target sparsity: 0.9 or fc1=0.92,fc2=0.91,Conv2d=0.6")
    p.add_argument("--quality", type=per_layer_spec, help="threshold quality q of |w| > q·std(W), per layer as above")
    p.add_argument("--steps", type=_positive_int, default=1, help="prune → retrain rounds (default 1)")
    p.add_argument("--sparsity-schedule", choices=_sparsity_schedules(), default="gradual")
    p.add_argument("--distill", action="store_true", help="retrain with soft targets of the unpruned model")
    g = p.add_argument_group("post-training (unlabeled calibration samples, no retraining by default)")
    g.add_argument("--method", choices=_pruning_methods(), default="magnitude",
                   help="magnitude (default: iterative, retrained); obs: SparseGPT-style reconstruction; "
                        "wanda: |W|·‖x‖ per output row")
    g.add_argument("--pattern", type=pattern_spec, help="N:M sparsity instead of --sparsity: 2:4 or fc1=2:4,fc2=4:8")
    g.add_argument("--calibration", type=_positive_int,
                   help="calibration samples of the training data, labels ignored (default 512 for obs/wanda/pattern)")
    g.add_argument("--sequential", action="store_true",
                   help="calibrate each layer on the already-pruned earlier layers (one pass per layer)")
    g.add_argument("--allocation", choices=_allocations(), default="uniform",
                   help="uniform (default): every layer at --sparsity; error: one network-wide --sparsity spread "
                        "over the layers by their measured error curves")
    add_model_options(p)
    add_common_options(p)
    add_training_options(p, None, 0.01, epochs_help="retraining epochs (default 3; post-training: 0)")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    """``edl prune``: magnitude pruning (per-layer sparsity or quality), optionally retrained, to a checkpoint."""
    from .. import compress
    from ..train import evaluate, save_checkpoint

    from ..compress.recipe import DEFAULT_CALIBRATION

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    post_training = args.method != "magnitude" or args.pattern is not None or args.calibration is not None
    compress.pruning.check_targets(args.sparsity, args.quality, args.pattern,
                                   names=("--sparsity", "--quality or --pattern"))
    if post_training and args.quality is not None:
        raise RecipeError("prune: post-training pruning (--method, --pattern, --calibration) takes --sparsity "
                          "or --pattern, not --quality")
    if args.sequential and not post_training:
        raise RecipeError("prune: --sequential is a post-training setting: give --method obs or wanda, "
                          "or --calibration")
    if args.allocation != "uniform":
        if not post_training:
            raise RecipeError("prune: --allocation is a post-training setting: give --method obs or wanda, "
                              "or --calibration")
        if args.pattern is not None or args.sequential or isinstance(args.sparsity, dict):
            raise RecipeError("prune: --allocation error spreads one --sparsity (a number) over the layers: "
                              "not with --pattern, --sequential or per-layer sparsities")
    if args.epochs is None:
        args.epochs = 0 if post_training else 3
    _seed(args)
    model = _load_model(src, args)
    ds = _load_data(args)
    before = evaluate(model, ds.test)
    teacher = copy.deepcopy(model).eval() if args.distill else None
    trainer = _trainer(args, ds, teacher=teacher)
    if post_training:
        from ..compress.calibration import calibration_samples

        calibration = calibration_samples(ds.train, args.calibration or DEFAULT_CALIBRATION)
        model, report = compress.pruning.prune_post_training(
            model, calibration, sparsity=args.sparsity, pattern=args.pattern, method=args.method,
            sequential=args.sequential, allocation=args.allocation)
        if args.epochs:
            report.history = trainer.fit(model, description="prune fine-tune")
    else:
        retrain = (lambda m, step: trainer.fit(m, description=f"prune {step}/{args.steps}")) if args.epochs else None
        model, report = compress.prune(model, sparsity=args.sparsity, quality=args.quality, steps=args.steps,
                                       schedule=args.sparsity_schedule, retrain=retrain)
    report.accuracy_before, report.accuracy_after = before, evaluate(model, ds.test)
    save_checkpoint(model, out)
    lines = [f"accuracy {100 * before:.2f}% → {100 * report.accuracy_after:.2f}%  → {out}"]
    errors = report.settings.get("reconstruction_error", {})
    lines += [f"  {name}: sparsity {100 * s:.1f}%"
              + (f", output error {100 * errors[name]:.2f}%" if name in errors else "")
              for name, s in report.settings["sparsity"].items()]
    if report.settings.get("not_covered"):
        lines.append(f"  left dense (no calibration statistics): {', '.join(report.settings['not_covered'])}")
    _emit(args, report.to_dict(), "\n".join(lines))
    return 0


# --------------------------------------------------------------------------- edl quantize
def add_quantize(p: argparse.ArgumentParser) -> None:
    """Options of ``edl quantize``."""
    p.add_argument("checkpoint", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("-o", "--output", required=True, help="quantized checkpoint to write (then `edl encode`)")
    p.add_argument("--method", choices=_quantizers(), default="kmeans",
                   help="kmeans: weight sharing (default); fixed-point: dynamic fixed point (Qiu et al.); "
                        "int8: affine post-training quantization; ttq, twn, binary: ternary / binary weights "
                        "(first and last layer kept fp32)")
    p.add_argument("--bits", type=per_layer_spec, default=None,
                   help="bits per weight: 5 or Conv2d=8,Linear=5 (default: that for kmeans, 8 otherwise)")
    p.add_argument("--init", choices=_kmeans_inits(), default="linear", help="kmeans: centroid initialisation")
    p.add_argument("--activation-bits", type=_nonneg_int, default=8,
                   help="fixed-point/int8: bits of each layer's input activations (0 keeps them fp32; default 8)")
    p.add_argument("--per-tensor", action="store_true", help="int8: one weight scale per tensor, not per channel")
    p.add_argument("--calibration-batches", type=_positive_int, default=16,
                   help="fixed-point/int8: training batches used to choose activation ranges (default 16)")
    add_model_options(p)
    add_common_options(p)
    add_training_options(p, 1, 0.001, weight_decay=0.0)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    """``edl quantize``: k-means weight sharing, or fixed-point / int8 quantization, to a checkpoint."""
    from .. import compress
    from ..train import evaluate, save_checkpoint

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    _seed(args)
    model = _load_model(src, args)
    ds = _load_data(args)
    before = evaluate(model, ds.test)
    trainer = _trainer(args, ds)
    if args.method in ("fixed-point", "int8"):
        return _quantize_linear(args, model, ds, trainer, before, out)
    if args.method != "kmeans":       # ternary or binary weights, then fine-tuning with the quantizer in the loop
        finetune = (lambda m: trainer.fit(m, description=args.method)) if args.epochs else None
        result = compress.quantization.quantize(model, args.method, finetune=finetune)
        after = evaluate(model, ds.test)
        save_checkpoint(model, out)
        _emit(args, {"method": args.method, **result, "accuracy_before": before, "accuracy_after": after,
                     "output": str(out)},
              f"accuracy {100 * before:.2f}% → {100 * after:.2f}% ({args.method}: {', '.join(result['layers'])}) → {out}")
        return 0
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


# --------------------------------------------------------------------------- edl encode
def add_encode(p: argparse.ArgumentParser) -> None:
    """Options of ``edl encode``."""
    p.add_argument("checkpoint", help="checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True, help="compressed file to write (.edlz)")
    p.add_argument("--index-bits", type=per_layer_spec, default=None,
                   help="relative index bits: 5 or Conv2d=8,Linear=5 (default)")
    p.add_argument("--coding", choices=_codings(), default="huffman")
    add_model_options(p)
    add_common_options(p, data=False)
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    """``edl encode``: write a checkpoint as a compressed file and show each tensor's size."""
    from .. import format as fmt
    from ..compress.pipeline import parameter_bytes_fp32
    from ..report import markdown_table

    src, out = _input_file(args.checkpoint), _output_file(args.output)
    model = _load_model(src, args)
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
    from ..report import dumps, html, markdown_report, plots

    model_path = out_dir / f"{name}.edlz"
    fmt.atomic_write(model_path, result.file_bytes)
    report = result.to_dict()
    report["file"] = str(model_path)
    histograms = out_dir / "plots" / "weight_histograms.png"
    plots.weight_histograms(result.snapshots, histograms)
    fmt.atomic_write(out_dir / "report.json", dumps(report).encode())
    fmt.atomic_write(out_dir / "report.md", markdown_report(report, f"Deep Compression of {name}").encode())
    html.write(out_dir / "report.html", html.compression_report(
        report, [(histograms, "weight distribution before pruning, after pruning, after retraining and after "
                              "quantization (Deep Compression, Figures 4–5)")], f"Deep Compression of {name}"))
    return report


# --------------------------------------------------------------------------- edl compress, edl demo
def add_compress(p: argparse.ArgumentParser) -> None:
    """Options of ``edl compress``."""
    p.add_argument("recipe", help=f"YAML recipe, or the name of a shipped one ({', '.join(packaged_recipes())})")
    p.add_argument("--checkpoint", help="start from this trained model instead of training one")
    p.add_argument("-o", "--output", help="output directory (default runs/RECIPE)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed stage (OUTPUT/checkpoints)")
    add_log_dir_option(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_compress)


def cmd_compress(args: argparse.Namespace, recipe_file: Path | None = None, out_dir: Path | None = None) -> int:
    """Run the recipe's stages (dense → prune → quantize → encode) and write the file and the report."""
    from ..compress import load_recipe, pipeline
    from ..models.user import import_callable, is_import_path
    from ..report import layer_table, stage_table

    recipe = load_recipe(recipe_file or recipe_path(args.recipe))
    loggers = _epoch_loggers(args)
    out_dir = out_dir or _output_dir(args.output or f"runs/{Path(recipe.path).stem}")
    _seed(args)
    r = recipe.data
    if getattr(args, "resume", False):      # refuse foreign checkpoints before any data is read
        pipeline.check_resume(out_dir / "checkpoints", recipe)
    # the network: --model, else the recipe's model (a registry name or your MODULE:CALLABLE)
    spec = getattr(args, "user_model", None) or r["model"]
    kwargs = getattr(args, "model_kwargs", None)
    if kwargs is None and spec == r["model"]:
        kwargs = r.get("model_kwargs")
    model_args = argparse.Namespace(model=spec, model_kwargs=kwargs,
                                    trust_model_code=getattr(args, "trust_model_code", False))
    if is_import_path(spec):
        import_callable(spec)           # a bad import path fails before any data is read
    if args.checkpoint:                 # its recorded network, unless --model or the recipe names your code
        model_args.user_model = spec if getattr(args, "user_model", None) or is_import_path(spec) else None
        if model_args.user_model is None:
            model_args.model_kwargs = getattr(args, "model_kwargs", None)
        model = _load_model(_input_file(args.checkpoint), model_args)
    else:
        model = None
    if args.data is None:
        args.data = r.get("data", "fashion-mnist")
    if args.batch_size is None:
        args.batch_size = r.get("batch_size", 128)
    if model is None:
        ds, model = _data_and_model(args, model_args)
    else:
        ds = _load_data(args)
    console = _console()
    start = time.perf_counter()
    result = pipeline.run(model, ds.train, ds.test, recipe, pretrained=args.checkpoint is not None,
                          progress=not (args.no_progress or args.json),
                          log=(lambda *_: None) if args.json else (lambda m: console.print(m)),
                          meta={"data": ds.name}, checkpoint_dir=out_dir / "checkpoints",
                          resume=getattr(args, "resume", False), loggers=loggers)
    name = Path(args.checkpoint).stem if args.checkpoint else (
        spec.partition(":")[0].rpartition(".")[2] if is_import_path(spec) else spec)
    report = _write_pipeline_outputs(result, out_dir, name)
    report["seconds"] = time.perf_counter() - start
    text = "\n".join([stage_table(report["stages"]), "", layer_table(report["stages"]), "",
                      f"{report['file']}: {report['compressed_bytes']:,} bytes, {report['ratio']:.1f}× smaller; "
                      f"accuracy {100 * report['accuracy_original']:.2f}% → {100 * report['accuracy_compressed']:.2f}%; "
                      f"report in {out_dir}/report.md ({report['seconds']:.0f} s)"])
    _emit(args, report, text)
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    """Options of ``edl demo``."""
    p.add_argument("-o", "--output", help="output directory (default runs/demo)")
    add_common_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``edl compress`` of the shipped LeNet-300-100 recipe into ``runs/demo``."""
    recipe = packaged_recipe("lenet300")
    args.checkpoint = None
    return cmd_compress(args, recipe, _output_dir(args.output or "runs/demo"))


# --------------------------------------------------------------------------- edl compare
def add_compare(p: argparse.ArgumentParser) -> None:
    """Options of ``edl compare``."""
    from ..train.options import TRAIN_OPTIONS as T

    p.add_argument("checkpoint", help="trained checkpoint (.pt)")
    p.add_argument("-o", "--output", default="runs/methods", help="output directory (default runs/methods)")
    p.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated subset of: " + ", ".join(methods()))
    p.add_argument("--sparsity", type=per_layer_spec, default=None,
                   help="pruning targets: 0.9 or Conv2d=0.6,Linear=0.9 (default)")
    p.add_argument("--epochs", type=T["epochs"], default=2, help="fine-tuning epochs each method gets (default 2)")
    p.add_argument("--lr", type=T["lr"], default=0.005, help="fine-tuning learning rate (default 0.005)")
    p.add_argument("--latency-repeat", type=_positive_int, default=200, help="timed batch-1 calls per model")
    add_log_dir_option(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Every inference method on one trained model: size, accuracy, MACs, latency, Pareto plot."""
    from .. import format as fmt
    from ..compress.methods import compare_methods, pareto_front
    from ..report import html, markdown_table, plots

    loggers = _epoch_loggers(args)
    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    _seed(args)
    model = _load_model(src, args)
    ds = _load_data(args)
    network = (getattr(model, "edl_arch", None) or {}).get("name") or src.stem
    say = (lambda line: None) if args.json or args.no_progress else (lambda line: print(line, file=sys.stderr))
    rows = compare_methods(model, ds.train, ds.test, methods=args.methods, epochs=args.epochs, lr=args.lr,
                           sparsity=args.sparsity, seed=args.seed, out_dir=out_dir / "files",
                           latency_repeat=args.latency_repeat, progress=say, loggers=loggers)
    front = pareto_front(rows)
    plots.pareto({network: rows}, out_dir / "pareto.png", {network: front})
    result = {"network": network, "methods": rows, "pareto_front": front}
    fmt.atomic_write(out_dir / "compare.json", json.dumps(result, indent=2).encode())
    table = ([[r["method"], 100 * r["accuracy"], r["file_bytes"], r["ratio"], r["macs"], r["latency_us"],
               r["latency_ratio"], r["runtime"]] for r in rows],
             ["method", "accuracy %", "file bytes", "ratio ×", "MACs (non-zero)", "latency µs", "speedup ×",
              "runtime"])
    text = markdown_table(*table)
    text += f"\n\nPareto front (size vs accuracy): {', '.join(front)}\nplot: {out_dir / 'pareto.png'}"
    fmt.atomic_write(out_dir / "compare.md", (text + "\n").encode())
    html.write(out_dir / "report.html", html.command_report(
        f"Every method on {network}", [("methods", *table)], [(out_dir / "pareto.png", "accuracy vs file size")],
        [f"Pareto front (size vs accuracy): {', '.join(front)}"]))
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl sensitivity
def add_sensitivity(p: argparse.ArgumentParser) -> None:
    """Options of ``edl sensitivity``."""
    p.add_argument("checkpoint", help="trained checkpoint (.pt) or compressed file")
    p.add_argument("-o", "--output", default="runs/sensitivity", help="output directory")
    p.add_argument("--sparsities", type=_float_list, default=[0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--layers", type=lambda s: [x for x in s.split(",") if x], help="layer names (default all)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy drop in points for suggested sparsities")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """``edl sensitivity``: accuracy of each layer pruned alone, and the sparsities it suggests."""
    from .. import compress, format as fmt
    from ..report import html, markdown_table, plots
    from ..train import evaluate

    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    model = _load_model(src, args)
    ds = _load_data(args)
    curves = compress.sensitivity(model, lambda m: evaluate(m, ds.test), sparsities=args.sparsities,
                                  layers=args.layers)
    chosen = compress.sparsities_from_sensitivity(curves, args.max_drop / 100.0)
    plots.sensitivity(curves, out_dir / "sensitivity.png")
    result = {"curves": curves, "suggested_sparsity": chosen, "max_drop_points": args.max_drop}
    fmt.atomic_write(out_dir / "sensitivity.json", json.dumps(result, indent=2).encode())
    rows = [[f"{100 * s:.0f}%"] + [100 * dict(curves[n])[s] for n in curves] for s in args.sparsities]
    header = ["sparsity"] + [f"{n} acc %" for n in curves]
    text = markdown_table(rows, header)
    suggestion = "suggested sparsity (drop ≤ {:.2f} points): {}".format(
        args.max_drop, ", ".join(f"{n}={s:.2f}" for n, s in chosen.items()))
    text += "\n\n" + suggestion
    html.write(out_dir / "report.html", html.command_report(
        f"Pruning sensitivity of {src.name}", [("accuracy with one layer pruned at a time", rows, header)],
        [(out_dir / "sensitivity.png", "accuracy vs sparsity, one layer at a time")], [suggestion]))
    text += f"\nplot: {out_dir / 'sensitivity.png'}"
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl bits
def add_bits(p: argparse.ArgumentParser) -> None:
    """Options of ``edl bits``."""
    p.add_argument("checkpoint", help="trained checkpoint (.pt)")
    p.add_argument("-o", "--output", default="runs/bits", help="output directory")
    p.add_argument("--bits", type=_int_list, default=[1, 2, 3, 4, 5, 6, 8], help="bit widths (default 1..6,8)")
    p.add_argument("--pruned", help="also sweep this pruned (and retrained) checkpoint of the same network")
    p.add_argument("--init", choices=_kmeans_inits(), default="linear")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_bits)


def cmd_bits(args: argparse.Namespace) -> int:
    """How many bits do we need?  Accuracy vs bits, conv and fc layers separately, with and without pruning."""
    from .. import compress, format as fmt
    from ..compress.layers import layer_type
    from ..report import html, markdown_table, plots
    from ..train import evaluate

    src, out_dir = _input_file(args.checkpoint), _output_dir(args.output)
    base = _load_model(src, args)
    ds = _load_data(args)
    types = sorted({layer_type(m) for _, m in compress.compressible_layers(base)})
    variants = {"": base}
    if args.pruned is not None:
        pruned = _load_model(_input_file(args.pruned), args)
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
    fmt.atomic_write(out_dir / "bits.json", json.dumps(result, indent=2).encode())
    rows = [[b] + [100 * dict(series[k])[b] for k in series] for b in args.bits]
    header = ["bits"] + [f"{k} acc %" for k in series]
    html.write(out_dir / "report.html", html.command_report(
        f"How many bits does {src.name} need?", [("accuracy vs bits of weight sharing", rows, header)],
        [(out_dir / "bits.png", "accuracy vs bits of weight sharing (other layers fp32)")]))
    _emit(args, result, markdown_table(rows, header) + f"\n\nplot: {out_dir / 'bits.png'}")
    return 0


