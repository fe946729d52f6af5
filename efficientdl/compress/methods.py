"""Every inference method side by side on one network: size, accuracy, multiplies, latency.

The lecture's algorithms for efficient inference trade accuracy for size and speed in
different ways; :func:`compare_methods` applies each one (and the useful combinations) to
copies of the same trained model, gives each the same fine-tuning budget, writes each to
the compressed file and measures, on the model decoded from that file:

* ``file_bytes`` and ``ratio`` (fp32 parameter bytes of the original / file bytes),
* ``accuracy`` on the test set,
* ``macs`` — multiply-accumulates per sample with the weights as stored, counting only
  non-zero weights (what a sparse engine executes; a dense engine executes
  ``dense_macs``), and
* ``latency_us`` — median batch-1 CPU latency of the decoded model (plain PyTorch layers,
  or the compressed runtime where the method's weights are codebook-indexed).

Methods (:data:`METHODS`, a registry: a new method is one builder function there):

``fp32``                 the trained model as it is.
``prune``                iterative magnitude pruning with retraining (Han et al. 2015).
``share``                k-means weight sharing with trained centroids (conv 8, fc 5 bits;
                         centroids fine-tuned at :data:`DENSE_CENTROID_LR`).
``deep-compression``     pruning + weight sharing (conv 5, fc 4 bits; centroids at
                         :data:`PRUNED_CENTROID_LR`, the shipped recipes' rate) + Huffman coding.
``fixed-point-8``        dynamic fixed point, 8-bit weights and activations, calibration only.
``fixed-point-4``        4-bit weights, 8-bit activations, fine-tuned with the quantizers.
``int8``                 affine int8 post-training quantization, per-channel weights.
``ttq``                  trained ternary quantization (first and last layer fp32).
``prune+ttq``            pruning, then TTQ on the surviving weights.
``low-rank+fixed-point`` truncated SVD of the largest fc layer (4× fewer parameters),
                         fine-tuned, then 8-bit dynamic fixed point.

Every compressed file is Huffman coded (the file's default).
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..core.registry import Registry
from ..errors import RecipeError
from .layers import compressible_tensors, layer_type, run_with_layer_hooks
from .lowrank.svd import low_rank
from .pruning.prune import prune
from .quantization.fixed_point import freeze, quantize_linear
from .quantization.share import share
from .quantization.ternary import ternarize

#: default pruning targets (the order of magnitude of Deep Compression's LeNets): convolutions
#: 60%, every other weight matrix (fully connected, recurrent, embedding) 90%
DEFAULT_SPARSITY = {"Conv2d": 0.6, "Linear": 0.9}
#: centroid fine-tuning rates: a centroid's gradient is the sum over its cluster (the paper's
#: rule), so the clusters of an unpruned layer — 10× larger — need a far smaller rate
#: (LeNet-300-100, 5 bits, dense: lr 1e-3 diverges to 10%, 1e-4 keeps 89.9%)
DENSE_CENTROID_LR, PRUNED_CENTROID_LR = 1e-4, 2e-3


def batch1_latency_us(model: nn.Module, example: torch.Tensor, repeat: int = 200, warmup: int = 20) -> float:
    """Median wall-clock time of ``model(example)`` in microseconds (no gradients).

    Args:
        model: the network (put in eval mode).
        example: one input batch (batch 1 for a latency).
        repeat: timed calls; the median is returned.
        warmup: untimed calls first.
    """
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            start = time.perf_counter()
            model(example)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def stored_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """``(non-zero MACs, dense MACs)`` per sample of the Linear/Conv2d layers of ``model``.

    A Linear layer does ``nnz(W)`` multiplies per sample (``out · in`` dense); a Conv2d
    ``nnz(W) · H_out · W_out``.  Biases are not counted, and neither are other layer
    types (recurrent, attention): for such models the count is a lower bound.
    """
    totals = [0, 0]

    def hook(name: str, module: nn.Module, inputs, output) -> None:
        positions = output.shape[-1] * output.shape[-2] if isinstance(module, nn.Conv2d) else 1
        totals[0] += int(torch.count_nonzero(module.weight)) * positions
        totals[1] += module.weight.numel() * positions

    run_with_layer_hooks(model, example, hook)
    return totals[0], totals[1]


def _by_present_type(conv_value: Any, other_value: Any, model: nn.Module) -> dict:
    """A per-type setting for the types of ``model``'s weight tensors: convolutions get
    ``conv_value``, every other layer type (fc, recurrent, embedding, …) ``other_value``."""
    return {layer_type(t.module): conv_value if isinstance(t.module, nn.modules.conv._ConvNd) else other_value
            for t in compressible_tensors(model)}


def _largest_linear(model: nn.Module) -> str | None:
    linear = [(m.weight.numel(), name) for name, m in model.named_modules() if type(m) is nn.Linear]
    return max(linear)[1] if linear else None


@dataclass
class MethodContext:
    """What a method's builder gets: the trained model and the shared fine-tuning budget.

    Attributes:
        model: the trained fp32 model (never modified; builders work on copies).
        calibration: training batches (calibration data for the quantizers).
        fit: ``fit(model, lr=None)`` fine-tunes with the common budget (``lr`` overrides the rate).
        pruned: a fresh copy of the pruned model (pruned once, with retraining, then cached).
        seed: training seed.
        share_bits, dc_bits: per-type bits of weight sharing alone and of Deep Compression.
    """

    model: nn.Module
    calibration: Iterable
    fit: Callable[..., None]
    pruned: Callable[[], nn.Module]
    seed: int
    share_bits: dict
    dc_bits: dict

    def copy(self) -> nn.Module:
        """A deep copy of the trained model."""
        return copy.deepcopy(self.model)


#: the methods of :func:`compare_methods`: name → ``build(context) -> compressed model``
METHODS: Registry[Callable[[MethodContext], nn.Module]] = Registry("method")
#: methods whose decoded files run on the compressed runtime (codebook-indexed weights)
COMPRESSED_RUNTIME = ("share", "deep-compression")


@METHODS.register("fp32", help="the trained model as it is")
def _fp32(ctx: MethodContext) -> nn.Module:
    return ctx.copy()


@METHODS.register("prune", help="iterative magnitude pruning with retraining")
def _prune(ctx: MethodContext) -> nn.Module:
    return ctx.pruned()


@METHODS.register("share", help="k-means weight sharing with trained centroids")
def _share(ctx: MethodContext) -> nn.Module:
    m = ctx.copy()
    share(m, bits=ctx.share_bits, seed=ctx.seed, finetune=lambda mm: ctx.fit(mm, DENSE_CENTROID_LR))
    return m


@METHODS.register("deep-compression", help="pruning + weight sharing + Huffman coding")
def _deep_compression(ctx: MethodContext) -> nn.Module:
    m = ctx.pruned()
    share(m, bits=ctx.dc_bits, seed=ctx.seed, finetune=lambda mm: ctx.fit(mm, PRUNED_CENTROID_LR))
    return m


def _calibrated(scheme: str, weight_bits: int, finetuned: bool) -> Callable[[MethodContext], nn.Module]:
    def build(ctx: MethodContext) -> nn.Module:
        m = ctx.copy()
        quantize_linear(m, ctx.calibration, scheme=scheme, weight_bits=weight_bits, activation_bits=8)
        if finetuned:
            ctx.fit(m)
        return freeze(m)
    return build


METHODS.register("fixed-point-8", _calibrated("fixed", 8, False),
                 help="dynamic fixed point, 8-bit weights and activations, calibration only")
METHODS.register("fixed-point-4", _calibrated("fixed", 4, True),
                 help="4-bit weights, 8-bit activations, fine-tuned with the quantizers")
METHODS.register("int8", _calibrated("affine", 8, False), help="affine int8 post-training quantization")


def _ternary(start: Callable[[MethodContext], nn.Module]) -> Callable[[MethodContext], nn.Module]:
    def build(ctx: MethodContext) -> nn.Module:
        m = start(ctx)
        ternarize(m, "ttq")
        ctx.fit(m)
        return m
    return build


METHODS.register("ttq", _ternary(MethodContext.copy), help="trained ternary quantization (first and last layer fp32)")
METHODS.register("prune+ttq", _ternary(lambda ctx: ctx.pruned()), help="pruning, then TTQ on the surviving weights")


@METHODS.register("low-rank+fixed-point", help="SVD of the largest fc layer (4× fewer parameters), then 8-bit")
def _low_rank_fixed_point(ctx: MethodContext) -> nn.Module:
    m = ctx.copy()
    target = _largest_linear(m)
    if target is None:
        raise RecipeError("low-rank+fixed-point needs an nn.Linear layer")
    low_rank(m, reduction={target: 4})
    ctx.fit(m)
    quantize_linear(m, ctx.calibration, scheme="fixed", weight_bits=8, activation_bits=8)
    return freeze(m)


def compare_methods(model: nn.Module, train_data: Iterable, test_data: Iterable, methods: Iterable[str] | None = None,
                    epochs: int = 2, lr: float = 0.005, sparsity: Any = None, seed: int = 0,
                    out_dir: str | Path | None = None, latency_repeat: int = 200,
                    progress: Callable[[str], None] | None = None, loggers: Sequence = ()) -> list[dict]:
    """Apply each method to a copy of ``model`` and measure it (see the module docstring).

    Args:
        model: the trained fp32 model (left untouched).
        train_data: training batches (fine-tuning, calibration).
        test_data: test batches (accuracy).
        methods: names from :data:`METHODS` (default: all).
        epochs: fine-tuning epochs each method gets (pruning: per pruning step, 2 steps).
        lr: fine-tuning learning rate (SGD with momentum, cosine schedule).
        sparsity: pruning targets (scalar or per-layer mapping; default :data:`DEFAULT_SPARSITY`).
        seed: training seed.
        out_dir: keep each method's compressed file there (``METHOD.edlz``); default a
            temporary directory.
        latency_repeat: timed batch-1 calls per model.
        progress: called with one line per finished method.
        loggers: per-epoch loggers of every fine-tuning fit (see :class:`~efficientdl.train.Trainer`),
            each fit labelled with its method's name.

    Returns:
        One dict per method: ``method``, ``accuracy``, ``file_bytes``, ``ratio``, ``macs``,
        ``dense_macs``, ``latency_us``, ``latency_ratio`` (fp32 latency / this latency,
        measured in the same run) and ``runtime``.

    Raises:
        RecipeError: an unknown method name.
    """
    from .. import format as fmt
    from ..train import Trainer, evaluate

    methods = list(METHODS if methods is None else methods)
    for name in methods:
        METHODS.entry(name)
    sparsity = (_by_present_type(DEFAULT_SPARSITY["Conv2d"], DEFAULT_SPARSITY["Linear"], model)
                if sparsity is None else sparsity)

    building = {"method": "fp32"}           # the method whose model is being built: the label of its fits

    def fit(m: nn.Module, rate: float = lr) -> None:
        if epochs:
            Trainer(train_data, test_data, epochs=epochs, lr=rate, weight_decay=0.0, seed=seed,
                    progress=False, loggers=loggers).fit(m, description=building["method"])

    pruned_cache: list[nn.Module] = []

    def pruned() -> nn.Module:
        if not pruned_cache:
            m = copy.deepcopy(model)
            prune(m, sparsity=sparsity, steps=2, retrain=lambda mm, step: fit(mm))
            pruned_cache.append(m)
        return copy.deepcopy(pruned_cache[0])

    context = MethodContext(model, train_data, fit, pruned, seed, _by_present_type(8, 5, model),
                            _by_present_type(5, 4, model))

    example = next(iter(test_data))[0][:1]
    original_bytes = 4 * sum(p.numel() for p in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(out_dir) if out_dir is not None else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        fp32_latency = None
        for method in ["fp32"] + [m for m in methods if m != "fp32"]:
            building["method"] = method
            built = METHODS.get(method)(context)
            path = where / f"{method}.edlz"
            fmt.save(built, path)
            container = fmt.read(path)
            # the file was written just now from the caller's model: its code (yours, for a model built
            # from MODULE:CALLABLE) is already imported, so rebuilding it imports nothing new
            macs, dense_macs = stored_macs(fmt.load(container, trust_model_code=True), example)
            runtime = "compressed" if method in COMPRESSED_RUNTIME else "dense"
            decoded = fmt.load(container, runtime=runtime, trust_model_code=True)
            latency = batch1_latency_us(decoded, example, latency_repeat)
            fp32_latency = fp32_latency or latency
            row = {"method": method, "accuracy": evaluate(decoded, test_data), "file_bytes": path.stat().st_size,
                   "original_bytes": original_bytes, "macs": macs, "dense_macs": dense_macs,
                   "latency_us": latency, "latency_ratio": fp32_latency / latency, "runtime": runtime}
            row["ratio"] = original_bytes / row["file_bytes"]
            if method in methods:
                rows.append(row)
            if progress is not None:
                progress(f"{method}: {100 * row['accuracy']:.2f}%, {row['file_bytes']:,} bytes "
                         f"({row['ratio']:.1f}×), {macs:,} MACs, {latency:.0f} µs")
    return rows


def pareto_front(rows: list[dict]) -> list[str]:
    """The methods no other method beats on both file size and accuracy.

    A row is dominated when another is no larger and no less accurate, and strictly
    better in one of the two.

    Returns:
        The names of the non-dominated methods, smallest file first.
    """
    front = []
    for r in rows:
        dominated = any(o is not r and o["file_bytes"] <= r["file_bytes"] and o["accuracy"] >= r["accuracy"]
                        and (o["file_bytes"] < r["file_bytes"] or o["accuracy"] > r["accuracy"]) for o in rows)
        if not dominated:
            front.append(r)
    return [r["method"] for r in sorted(front, key=lambda r: r["file_bytes"])]
