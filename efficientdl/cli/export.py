"""``edl export FILE --format onnx|safetensors|pt2 -o OUT``: the decoded model for runtimes that do not read ``.edlz``.

The command only parses and reports; :mod:`efficientdl.format.export` writes the formats.
A missing optional package is reported before the file is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DependencyError
from .common import _input_shape
from .common import (UsageError, _emit, _input_file, _is_container, _load_model, _output_file, add_common_options,
                     add_model_options)


def add_export(p: argparse.ArgumentParser) -> None:
    """Options of ``edl export``."""
    from ..format.export import FORMATS

    p.add_argument("file", help="compressed file (.edlz) or checkpoint (.pt)")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="onnx: ONNX graph (onnxruntime, TensorRT, ...); safetensors: dense weights plus the "
                        "compressed form (codebooks, indices, masks) and metadata; pt2: torch.export archive "
                        "(torch.export.load)")
    p.add_argument("-o", "--output", help="file to write (default: FILE with the format's suffix)")
    p.add_argument("--input-shape", type=_input_shape, metavar="C,H,W",
                   help="one sample's shape to trace with (onnx, pt2; default: recorded in the file)")
    add_model_options(p)
    add_common_options(p, data=False)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """``edl export``: write the decoded model of FILE as ONNX, safetensors or a PT2 archive."""
    from ..format.export import FORMATS, INSTALL, missing_package

    package = missing_package(args.format)
    if package is not None:
        raise DependencyError(f"--format {args.format} needs the '{package}' package ({INSTALL})")
    src = _input_file(args.file)
    out = _output_file(args.output) if args.output else src.with_suffix(FORMATS[args.format])
    if out.resolve() == src.resolve():
        raise UsageError(f"{out}: is the input file; choose another output path")

    from .. import format as fmt
    from ..format.export import export_model

    container = fmt.read(src) if _is_container(src) else None
    model = _load_model(src, args)
    result = export_model(model, out, args.format, container=container, input_shape=args.input_shape)
    shape = "×".join(["batch", *map(str, result.input_shape)]) if result.input_shape else None
    text = f"{out}: {result.size_bytes:,} bytes, {args.format}" + (f", input {shape}" if shape else "") + \
        f", {result.tensors} tensors (from {src}, {Path(src).stat().st_size:,} bytes)"
    _emit(args, {**result.to_dict(), "source": str(src), "source_bytes": Path(src).stat().st_size}, text)
    return 0
