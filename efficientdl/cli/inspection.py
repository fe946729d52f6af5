"""``edl eval`` and ``edl info``: what a compressed file or checkpoint holds, and how accurate it is.

``edl info FILE`` must start fast: its path imports :mod:`efficientdl.format` and the
renderer only (``--runtime`` additionally builds the runtime model, which needs torch).
"""

from __future__ import annotations

import argparse

from .common import UsageError, _emit, _input_file, _is_container, _load_data, _load_model, add_common_options, names
from .common import _emit_blocks, _input_shape, _positive_int, add_model_options


# --------------------------------------------------------------------------- edl eval
def add_eval(p: argparse.ArgumentParser) -> None:
    """Options of ``edl eval``."""
    from ..format.container import RUNTIMES

    p.add_argument("file", help="compressed file (.edlz) or checkpoint (.pt)")
    p.add_argument("--runtime", choices=names(RUNTIMES), default="dense",
                   help="dense: decode to plain layers (default); compressed: compute from the sparse, "
                        "weight-shared form")
    _add_precision(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_eval)


#: efficientdl.nn.dispatch.PRECISIONS, spelled out: ``edl info`` must not import torch to build its options
PRECISIONS = ("fp32", "int8")


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compressed runtime: fp32 (exact products, default) or int8 (linear layers may run on "
                        "int8 activations and weights where measured faster; the error is reported)")


def cmd_eval(args: argparse.Namespace) -> int:
    """``edl eval``: test accuracy of a compressed file (dense or compressed runtime) or a checkpoint."""
    from ..train import evaluate

    from .. import format as fmt

    src = _input_file(args.file)
    recorded = None
    if args.precision != "fp32" and args.runtime != "compressed":
        raise UsageError(f"--precision {args.precision} needs --runtime compressed")
    if _is_container(src):
        model = _load_model(src, args, runtime=args.runtime, **({"precision": args.precision}
                                                                 if args.runtime == "compressed" else {}))
        meta = fmt.info(src).get("meta")
        recorded = meta.get("data") if isinstance(meta, dict) else None
    elif args.runtime != "dense":
        raise UsageError(f"{src}: --runtime {args.runtime} needs a compressed file, not a checkpoint")
    else:
        model = _load_model(src, args)
    if args.data is None:  # the dataset the file was compressed on, when it says
        from ..models.user import is_import_path

        if is_import_path(recorded) and not args.trust_model_code:   # a file never runs code on its own
            raise UsageError(f"{src}: was compressed on data from your code {recorded}; pass --data {recorded} "
                             "(or --trust-model-code) to use it")
        args.data = recorded if isinstance(recorded, str) else "fashion-mnist"
    ds = _load_data(args)
    acc = evaluate(model, ds.test)
    result = {"file": str(src), "data": ds.name, "accuracy": acc, "test_size": ds.test.dataset_size,
              "runtime": args.runtime, "precision": args.precision}
    text = f"{src}: accuracy {100 * acc:.2f}% on {ds.name} ({ds.test.dataset_size} test images, {args.runtime} runtime)"
    if args.runtime == "compressed":
        report = model.edl_runtime
        result["layers"] = report.to_dict()
        text += f"\ncomputed from compressed form: {', '.join(report.served_compressed()) or 'none'}"
        if report.dense:
            text += f"\nleft dense: {', '.join(report.dense)}"
        for name, reasons in report.fallbacks().items():
            text += f"\n{name}: decoded for {', '.join(f'{f} ({why})' for f, why in reasons.items())}"
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl info
def add_info(p: argparse.ArgumentParser) -> None:
    """Options of ``edl info``."""
    p.add_argument("file", help="compressed file (.edlz)")
    p.add_argument("--runtime", action="store_true",
                   help="also build the compressed runtime model, measure each layer's kernels on a random "
                        "batch and report the choice, the times and the resident weight memory")
    p.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                   help="batch size of the runtime measurement (default 1)")
    p.add_argument("--input-shape", type=_input_shape, metavar="C,H,W",
                   help="one sample's shape for the runtime measurement (default: the file's record)")
    p.add_argument("--prefer", choices=["speed", "memory"], default="speed",
                   help="runtime: speed (dense kernels where they win) or memory (never keep a decoded weight)")
    _add_precision(p)
    add_model_options(p)
    add_common_options(p, data=False)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """``edl info``: header and per-tensor sizes of a compressed file (no torch unless ``--runtime``)."""
    from .. import format as fmt

    d = fmt.info(_input_file(args.file))
    rows = [[t["name"], t["kind"], t["weights"], 100 * t["density"], t["weight_bits"], t["weight_bits_huffman"],
             t["index_bits"], t["index_bits_huffman"], t["entries"], t["size_bytes"]] for t in d["tensors"]]
    arch = d["arch"] or {}
    blocks = [
        f"{d['path']}: efficientdl compressed file, format version {d['format_version']}",
        f"architecture: {arch.get('name') or arch.get('import') or 'none recorded'} {arch.get('kwargs', '')}",
        f"size: {d['size_bytes']:,} bytes; fp32 parameters: {d['original_bytes']:,} bytes; ratio {d['ratio']:.1f}×",
        "", (rows, ["tensor", "kind", "weights", "density %", "weight bits", "Huffman weight bits",
                    "index bits", "Huffman index bits", "entries", "bytes"]),
        "", "weight / index bits: the width of a stored field; Huffman: the average coded bits per field "
            "(– where the stream is not Huffman coded)"]
    if args.runtime:
        d["runtime"], runtime_blocks = _runtime_report(args)
        blocks += runtime_blocks
    _emit_blocks(args, d, blocks)
    return 0




def _runtime_report(args: argparse.Namespace) -> tuple[dict, list]:
    """Build the compressed runtime, settle it on a random batch, and tabulate every layer's choice."""
    import math

    import torch

    from .. import format as fmt
    from ..format.export import example_input_shape
    from ..nn import settle

    src = _input_file(args.file)
    model = _load_model(src, args, runtime="compressed", prefer=args.prefer, precision=args.precision)
    shape = example_input_shape(model, fmt.read(src).header, args.input_shape)
    if shape is None:
        raise UsageError(f"{src}: the file records no input shape; pass --input-shape C,H,W")
    example = torch.rand((args.batch, *shape), generator=torch.Generator().manual_seed(0))
    try:
        settled = settle(model, example)
    except RuntimeError as e:                     # the user's shape does not fit the model
        raise UsageError(f"{src}: the model does not run on input {tuple(example.shape)}: "
                         f"{str(e).splitlines()[0]}") from None
    report = model.edl_runtime
    d = report.to_dict()
    rows = []
    for layer in d["layers"]:
        for key, choice in layer["choices"].items():
            times = ", ".join(f"{k} {v:.0f}" for k, v in sorted(choice["times_us"].items(), key=lambda kv: kv[1])
                              if not math.isnan(v))          # NaN: the only candidate, not timed
            error = choice.get("errors", {}).get(choice["kernel"])
            rows.append([layer["name"], "×".join(map(str, layer["shape"])), layer["held"], key.split("|")[1],
                         choice["kernel"], times or "–", "–" if error is None else f"{100 * error:.2f}%",
                         layer["packed_bytes"], layer["decoded_bytes"], layer["dense_bytes"]])
    verdict = (f"end to end on a random {tuple(example.shape)} batch: compressed {settled['compressed_us']:.0f} µs, "
               f"dense {settled['dense_us']:.0f} µs ({settled['speedup']:.2f}×) → {settled['decision']}")
    blocks = ["", f"compressed runtime (prefer={report.prefer}, precision={report.precision}), kernels measured "
                  "on this machine:", "",
              (rows, ["tensor", "shape", "held as", "columns", "kernel", "measured µs (median)",
                      "error vs exact (max, relative)", "packed bytes", "decoded bytes", "dense fp32 bytes"]),
              "", verdict, f"resident weight bytes: {d['resident_bytes']:,}"]
    chains = d.get("chains") or {}
    for c in chains.get("chains", []):
        blocks.append("one compiled call at batch 1: " + " → ".join(
            f"{layer} ({act})" if act != "identity" else layer for layer, act in zip(c["layers"], c["activations"])))
    if chains.get("reason"):
        blocks.append(f"no compiled chain: {chains['reason']}")
    if chains.get("batchnorm_affine"):
        names = chains["batchnorm_affine"]
        blocks.append(f"BatchNorm as a precomputed per-channel affine (x·s + t): {len(names)} modules "
                      f"({', '.join(names[:4])}{', …' if len(names) > 4 else ''})")
    for name, reasons in d["fallbacks"].items():
        blocks.append(f"{name}: decoded for {', '.join(f'{f} ({why})' for f, why in reasons.items())}")
    return d, blocks
