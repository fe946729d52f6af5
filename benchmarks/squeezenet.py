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

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _recipe_bench import arguments, run, write  # noqa: E402

TARGET_RATIO = 10.0
TARGET_DROP_POINTS = 1.0


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "squeezenet")
    summary = run("squeezenet", args, TARGET_RATIO, TARGET_DROP_POINTS)
    print(write(summary, args.json, "SqueezeNet (28×28, v1.1 layout) on Fashion-MNIST: Deep Compression"))


if __name__ == "__main__":
    main()
