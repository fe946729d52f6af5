"""``edl eval`` and ``edl info``: what a compressed file or checkpoint holds, and how accurate it is.

``edl info FILE`` must start fast: its path imports :mod:`efficientdl.format` and the
renderer only (``--runtime`` additionally builds the runtime model, which needs torch).
"""

from __future__ import annotations

import argparse

from .common import UsageError, _emit, _input_file, _is_container, _load_data, _load_model, add_common_options, names
from .common import _emit_blocks, add_model_options


# --------------------------------------------------------------------------- edl eval
def add_eval(p: argparse.ArgumentParser) -> None:
    """Options of ``edl eval``."""
    from ..format.container import RUNTIMES

    p.add_argument("file", help="compressed file (.edlz) or checkpoint (.pt)")
    p.add_argument("--runtime", choices=names(RUNTIMES), default="dense",
                   help="dense: decode to plain layers (default); compressed: compute from the sparse, "
                        "weight-shared form")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """``edl eval``: test accuracy of a compressed file (dense or compressed runtime) or a checkpoint."""
    from ..train import evaluate

    from .. import format as fmt

    src = _input_file(args.file)
    recorded = None
    if _is_container(src):
        model = _load_model(src, args, runtime=args.runtime)
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
              "runtime": args.runtime}
    text = f"{src}: accuracy {100 * acc:.2f}% on {ds.name} ({ds.test.dataset_size} test images, {args.runtime} runtime)"
    if args.runtime == "compressed":
        result["layers"] = model.edl_runtime
        text += f"\ncomputed from compressed form: {', '.join(model.edl_runtime['compressed']) or 'none'}"
        if model.edl_runtime["dense"]:
            text += f"\nleft dense: {', '.join(model.edl_runtime['dense'])}"
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl info
def add_info(p: argparse.ArgumentParser) -> None:
    """Options of ``edl info``."""
    p.add_argument("file", help="compressed file (.edlz)")
    p.add_argument("--runtime", action="store_true",
                   help="also build the compressed runtime model and report its resident weight memory")
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
        from ..nn import runtime_memory

        model = _load_model(_input_file(args.file), args, runtime="compressed")
        d["runtime"] = runtime_memory(model)
        rows = [[m["name"], "×".join(map(str, m["shape"])), m["entries"], m["entry_bits"], m["partitions"],
                 m["dense_bytes"], m["weight_bytes"], m["ratio"]] for m in d["runtime"]]
        blocks += ["", "resident weight memory of the compressed runtime:", "",
                   (rows, ["layer", "out×in", "entries", "entry bits", "partitions", "dense fp32 bytes",
                           "resident bytes", "dense / resident"])]
    _emit_blocks(args, d, blocks)
    return 0


