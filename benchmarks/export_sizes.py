"""Sizes of one compressed LeNet-300-100 in every form a runtime might read, side by side.

The model is the registry LeNet-300-100 compressed with the settings of the shipped demo
recipe (``efficientdl/recipes/lenet300.yaml``: per-layer pruning 93% / 92% / 76%, 4-bit
weight sharing with linear initialisation, 5-bit relative indices, Huffman coding) in one
step and without any training, so the run takes seconds; or the ``.edlz`` given with
``--edlz``.  Training changes the Huffman-coded sizes a little (the weights' distribution),
the others not at all.

Rows: the fp32 checkpoint of the decoded dense model (:func:`efficientdl.train.save_checkpoint`),
the ``.edlz`` file, and what ``edl export`` writes (:mod:`efficientdl.format.export`): ONNX, the
same ONNX in a zip (deflate, level 9: the weight-shared values compress well), safetensors (dense
weights plus the codebooks and indices) and the ``torch.export`` archive (pt2).  Each row has its
ratio to the fp32 checkpoint; the ONNX file is checked with onnxruntime against torch.

Usage::

    python benchmarks/export_sizes.py --json runs/bench/export_sizes.json
    python benchmarks/export_sizes.py --edlz runs/demo/lenet300.edlz
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import efficientdl as edl  # noqa: E402
from efficientdl import format as fmt  # noqa: E402
from efficientdl import models  # noqa: E402
from efficientdl.compress import load_recipe  # noqa: E402
from efficientdl.format.export import export  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from efficientdl.train import save_checkpoint  # noqa: E402
from _machine import cpu_name  # noqa: E402


def compressed_lenet300(recipe_path: pathlib.Path, path: pathlib.Path) -> dict:
    """Write LeNet-300-100 compressed with the recipe's prune / quantize / encode settings (no training)."""
    recipe = load_recipe(recipe_path).data
    torch.manual_seed(recipe.get("seed", 0))
    model = models.create(recipe.get("model", "lenet300"))
    model, _ = edl.compress.prune(model, sparsity=recipe["prune"]["sparsity"])
    model, _ = edl.compress.share(model, bits=recipe["quantize"]["bits"], init=recipe["quantize"].get("init", "linear"),
                                  seed=recipe.get("seed", 0))
    encode = recipe.get("encode", {})
    fmt.save(model, path, index_bits=encode.get("index_bits"), coding=encode.get("coding", "huffman"))
    return {"recipe": str(recipe_path), "sparsity": recipe["prune"]["sparsity"], "bits": recipe["quantize"]["bits"],
            "index_bits": encode.get("index_bits"), "coding": encode.get("coding", "huffman"), "trained": False}


def onnx_error(onnx_path: pathlib.Path, edlz: pathlib.Path) -> float | None:
    """Largest |onnxruntime − torch| relative to the largest output, on 64 random inputs (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model = fmt.load(edlz)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    return float(abs(y - ref).max() / abs(ref).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edlz", type=pathlib.Path, help="a compressed LeNet-300-100 (default: made here)")
    parser.add_argument("--recipe", type=pathlib.Path, default=ROOT / "efficientdl" / "recipes" / "lenet300.yaml")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here (and the table beside it, .md)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if args.edlz:
            edlz, source = args.edlz, {"file": str(args.edlz)}
        else:
            edlz = tmp / "lenet300.edlz"
            source = compressed_lenet300(args.recipe, edlz)
        save_checkpoint(fmt.load(edlz), tmp / "lenet300-fp32.pt")
        sizes = {"fp32 checkpoint (.pt)": (tmp / "lenet300-fp32.pt").stat().st_size, ".edlz": edlz.stat().st_size}
        seconds = {}
        for name, format, suffix in (("ONNX", "onnx", ".onnx"), ("safetensors", "safetensors", ".safetensors"),
                                     ("pt2 (torch.export)", "pt2", ".pt2")):
            start = time.perf_counter()
            result = export(edlz, tmp / f"lenet300{suffix}", format)
            seconds[name] = time.perf_counter() - start
            sizes[name] = result.size_bytes
            if format == "onnx":
                with zipfile.ZipFile(tmp / "lenet300.onnx.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
                    z.write(tmp / "lenet300.onnx", "lenet300.onnx")
                sizes["ONNX, zipped"] = (tmp / "lenet300.onnx.zip").stat().st_size
                error = onnx_error(tmp / "lenet300.onnx", edlz)
        order = ["fp32 checkpoint (.pt)", ".edlz", "ONNX", "ONNX, zipped", "safetensors", "pt2 (torch.export)"]
        base = sizes["fp32 checkpoint (.pt)"]
        rows = [[name, sizes[name], base / sizes[name], round(seconds[name], 2) if name in seconds else None]
                for name in order]
    table = markdown_table(rows, ["form", "bytes", "× smaller than fp32", "export s"])
    report = {"model": "lenet300", "source": source, "sizes_bytes": {n: sizes[n] for n in order},
              "ratio_to_fp32": {n: base / sizes[n] for n in order}, "export_seconds": seconds,
              "onnx_relative_error": error, "cpu": cpu_name(), "python": platform.python_version(),
              "torch": torch.__version__}
    print(json.dumps(report, indent=2))
    print()
    print(table)
    print(f"\nCPU: {report['cpu']}; ONNX vs torch, max relative error: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fmt.atomic_write(args.json, (json.dumps(report, indent=2) + "\n").encode())
        fmt.atomic_write(args.json.with_suffix(".md"), (table + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
