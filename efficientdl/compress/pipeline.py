"""The three-stage Deep Compression pipeline (Han, Mao, Dally, ICLR'16), composed from a recipe.

    dense model ──prune + retrain──▶ sparse ──k-means share + train centroids──▶ shared
                ──Huffman-code values and relative indices──▶ file

After every stage the model is encoded for real (fixed-width fields after pruning
and quantization, Huffman coding last), so each stage's size is the size of a file,
and the model is evaluated, so each stage's accuracy is measured.  The final file is
decoded again and evaluated: the reported compressed accuracy is that of the model
rebuilt from the file.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import RecipeError
from ..report.results import StageReport
from .layers import check_spec_keys, compressible_tensors, plain_copy
from .prune import prune
from .recipe import Recipe
from .share import share


@dataclass
class PipelineResult:
    """Everything a compression run measured.

    Attributes:
        stages: one report per stage (dense, prune, quantize, huffman).
        file_bytes: the bytes of the final compressed file.
        snapshots: per layer, the weights at ``original``, ``pruned``, ``retrained``
            and ``quantized`` (nonzero values only), for the paper's histograms.
        bit_exact: decoded weights equal the quantized weights bit for bit.
        model: the compressed model (with its parametrizations).
    """

    stages: list[StageReport]
    file_bytes: bytes
    snapshots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    bit_exact: bool = False
    model: nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def original_bytes(self) -> int:
        return self.stages[0].original_bytes

    @property
    def compressed_bytes(self) -> int:
        return len(self.file_bytes)

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.compressed_bytes

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` content."""
        final = self.stages[-1]
        return {
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "accuracy_original": self.stages[0].accuracy_after,
            "accuracy_compressed": final.accuracy_after,
            "accuracy_drop_points": 100.0 * (self.stages[0].accuracy_after - final.accuracy_after)
            if final.accuracy_after is not None and self.stages[0].accuracy_after is not None else None,
            "bit_exact": self.bit_exact,
            "layers": [layer.to_dict() for layer in final.layers],
            "stages": [s.to_dict() for s in self.stages],
            "meta": self.meta,
        }


def parameter_bytes_fp32(model: nn.Module) -> int:
    """fp32 bytes of all of a model's parameters (the numerator of the compression ratio).

    Parametrized weights count once at their plain shape; tied parameters count once.
    """
    return 4 * sum(p.numel() for p in plain_copy(model).parameters())


def _nonzero_weights(model: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for t in compressible_tensors(model):
        w = t.value.detach().flatten().numpy()
        out[t.key] = w[w != 0].copy()
    return out


def _stage_size(stage: StageReport, model: nn.Module, index_bits: Any, coding: str, original: int,
                meta: dict[str, Any] | None = None) -> bytes:
    from ..format.container import encode

    data, layers = encode(model, index_bits=index_bits, coding=coding, meta=meta)
    stage.original_bytes, stage.size_bytes, stage.layers = original, len(data), layers
    return data


def check_against_model(recipe: Recipe, model: nn.Module) -> None:
    """Check that every per-layer key of a validated recipe names a layer or layer type of ``model``.

    Raises:
        RecipeError: ``FILE:LINE: stage.key: 'name' matches no prunable layer (known: …)``.
    """
    r = recipe.data
    for stage, key in (("prune", "sparsity"), ("prune", "quality"), ("quantize", "bits"), ("encode", "index_bits")):
        spec = (r.get(stage) or {}).get(key)
        try:
            check_spec_keys(spec, model, f"{stage}.{key}")
        except RecipeError as e:
            raise RecipeError(f"{recipe.where(stage, key)}: {e}") from None


def run(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    recipe: Recipe,
    pretrained: bool = False,
    progress: bool = True,
    log=print,
    meta: dict[str, Any] | None = None,
) -> PipelineResult:
    """Run dense training (unless ``pretrained``), pruning, weight sharing and Huffman coding.

    Args:
        model: any ``nn.Module`` (modified in place); its weight matrices
            (:func:`~efficientdl.compress.layers.compressible_tensors`) are compressed,
            everything else is kept dense.
        train_loader: iterable of ``(x, y)`` batches used for (re)training.
        test_loader: iterable of ``(x, y)`` batches used for accuracy.
        recipe: a validated :class:`~efficientdl.compress.recipe.Recipe`.
        pretrained: skip the recipe's dense training (the model is already trained).
        progress: show progress bars and per-epoch lines.
        log: where to print stage summaries.
        meta: JSON-serialisable metadata stored in the file (e.g. the dataset name).

    Returns:
        A :class:`PipelineResult`; ``file_bytes`` is the compressed file.
    """
    from ..format.container import decode, load_into
    from ..train import Trainer, evaluate

    r = recipe.data
    seed = r.get("seed", 0)
    check_against_model(recipe, model)
    index_bits = (r.get("encode") or {}).get("index_bits")
    coding = (r.get("encode") or {}).get("coding", "huffman")

    def trainer(section: dict, teacher: nn.Module | None = None, **defaults: Any) -> Trainer:
        opts = {**defaults, **{k: section[k] for k in ("epochs", "lr", "momentum", "weight_decay", "schedule") if k in section}}
        return Trainer(train_loader, test_loader, seed=seed, progress=progress, teacher=teacher, **opts)

    original = parameter_bytes_fp32(model)
    stages: list[StageReport] = []
    snapshots: dict[str, dict[str, np.ndarray]] = {}

    start = time.perf_counter()
    dense = StageReport(stage="dense")
    if not pretrained and r.get("dense") is not None:
        dense.history = trainer(r["dense"], epochs=20, lr=0.05).fit(model, description="dense")
    dense.accuracy_after = evaluate(model, test_loader)
    dense.seconds = time.perf_counter() - start
    _stage_size(dense, model, index_bits, "fixed", original)
    stages.append(dense)
    log(f"dense: accuracy {100 * dense.accuracy_after:.2f}%, {original} bytes of fp32 parameters")
    for name, w in _nonzero_weights(model).items():
        snapshots[name] = {"original": w}
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    section = r.get("prune")
    if section is not None:
        t = trainer(section, teacher if section.get("distill") else None, epochs=1, lr=0.01)
        steps = section.get("steps", 1)

        def retrain(m: nn.Module, step: int) -> list[dict]:
            if step == steps:
                for name, w in _nonzero_weights(m).items():
                    snapshots[name]["pruned"] = w
            if t.epochs == 0:
                return []
            return t.fit(m, description=f"prune {step}/{steps}")

        _, report = prune(model, sparsity=section.get("sparsity"), quality=section.get("quality"),
                          steps=steps, schedule=section.get("sparsity_schedule", "gradual"), retrain=retrain)
        report.accuracy_before = dense.accuracy_after
        report.accuracy_after = evaluate(model, test_loader)
        _stage_size(report, model, index_bits, "fixed", original)
        stages.append(report)
        for name, w in _nonzero_weights(model).items():
            snapshots[name]["retrained"] = w
        log(f"prune: accuracy {100 * report.accuracy_after:.2f}%, {report.size_bytes} bytes ({report.ratio:.1f}×)")

    section = r.get("quantize")
    if section is not None:
        t = trainer(section, teacher if section.get("distill") else None, epochs=0, lr=0.001, weight_decay=0.0)
        before = evaluate(model, test_loader)
        _, report = share(model, bits=section["bits"], init=section.get("init", "linear"), seed=seed,
                          finetune=(lambda m: t.fit(m, description="centroids")) if t.epochs > 0 else None)
        report.accuracy_before = before
        report.accuracy_after = evaluate(model, test_loader)
        _stage_size(report, model, index_bits, "fixed", original)
        stages.append(report)
        for name, w in _nonzero_weights(model).items():
            snapshots[name]["quantized"] = w
        log(f"quantize: accuracy {100 * report.accuracy_after:.2f}%, {report.size_bytes} bytes ({report.ratio:.1f}×)")

    final = StageReport(stage="huffman" if coding == "huffman" else "encode", settings={"coding": coding})
    final.accuracy_before = stages[-1].accuracy_after
    meta = {**(meta or {}), "accuracy_original": dense.accuracy_after, "accuracy_quantized": final.accuracy_before}
    file_bytes = _stage_size(final, model, index_bits, coding, original, meta)
    decoded = decode(file_bytes, "<compressed model>")
    rebuilt = load_into(plain_copy(model), decoded)
    final.accuracy_after = evaluate(rebuilt, test_loader)
    stages.append(final)
    bit_exact = all(torch.equal(decoded.tensors[t.param_name], t.value.detach()) for t in compressible_tensors(model))
    log(f"{final.stage}: accuracy {100 * final.accuracy_after:.2f}% (decoded from the file), "
        f"{final.size_bytes} bytes ({final.ratio:.1f}×)")
    return PipelineResult(stages, file_bytes, snapshots, bit_exact, model,
                          meta={**meta, "recipe": recipe.data, "recipe_path": recipe.path})
