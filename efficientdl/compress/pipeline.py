"""The three-stage Deep Compression pipeline (Han, Mao, Dally, ICLR'16), composed from a recipe.

    dense model ──prune + retrain──▶ sparse ──k-means share + train centroids──▶ shared
                ──Huffman-code values and relative indices──▶ file

Post-training compression of a network a user already has (no labels, no retraining) is
the same pipeline with calibration samples: ``prune.method: obs | wanda`` (or a
``pattern``) prunes in one shot by layer-wise reconstruction
(:func:`~efficientdl.compress.pruning.post_training.prune_post_training`),
``quantize.weighting: hessian`` clusters by the inputs' ``diag H``, and after each stage
bias correction and BatchNorm re-estimation may run (:mod:`~efficientdl.compress.correction`).
The inputs of the first ``calibration`` training samples are taken once, before anything
runs; every stage's report then records, per tensor, the relative output error of the
layer against the dense one on those inputs (``settings["output_error"]``).

After every stage the model is encoded for real (fixed-width fields after pruning
and quantization, Huffman coding last), so each stage's size is the size of a file,
and the model is evaluated, so each stage's accuracy is measured.  The final file is
decoded again and evaluated: the reported compressed accuracy is that of the model
rebuilt from the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import RecipeError
from ..report.results import LayerRecord, StageReport
from .layers import check_spec_keys, compressible_tensors, plain_copy, retie, tied_pairs
from .pruning.prune import prune, pruning_targets, weight_mask
from .recipe import Recipe, calibration_samples, post_training_prune
from ..core.state import apply_shared_weight
from .quantization.share import share


#: the keys of a recipe stage that are passed to that stage's :class:`~efficientdl.train.Trainer`
TRAINER_KEYS = ("epochs", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "clip_grad_norm",
                "optimizer")


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


def _take_calibration(loader: Iterable, samples: int) -> list[torch.Tensor]:
    """The recipe's calibration inputs, without moving the loader to its next epoch."""
    from .calibration import calibration_samples as take

    epoch = getattr(loader, "epoch", None)
    try:
        return take(loader, samples)
    finally:
        if epoch is not None and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)


def _output_errors(model: nn.Module, reference: dict[str, Any], originals: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor (by parameter name): ``‖(W − Ŵ) X‖_F / ‖W X‖_F`` against the dense weight
    on the calibration inputs of the dense model."""
    from .pruning.post_training import reconstruction_error

    errors = {}
    for t in compressible_tensors(model):
        if t.key in reference and t.key in originals:
            errors[t.param_name] = reconstruction_error(originals[t.key], t.value.detach(), reference[t.key])
    return errors


def check_against_model(recipe: Recipe, model: nn.Module) -> None:
    """Check that every per-layer key of a validated recipe names a layer or layer type of ``model``.

    Raises:
        RecipeError: ``FILE:LINE: stage.key: 'name' matches no prunable layer (known: …)``.
    """
    r = recipe.data
    for stage, key in (("prune", "sparsity"), ("prune", "quality"), ("prune", "pattern"), ("quantize", "bits"),
                       ("encode", "index_bits")):
        spec = (r.get(stage) or {}).get(key)
        try:
            check_spec_keys(spec, model, f"{stage}.{key}")
        except RecipeError as e:
            raise RecipeError(f"{recipe.where(stage, key)}: {e}") from None
    prune_section = r.get("prune")
    if prune_section is not None:       # per layer, one pruning method
        try:
            pruning_targets(model, prune_section.get("sparsity"), prune_section.get("quality"),
                            prune_section.get("pattern"))
        except RecipeError as e:
            raise RecipeError(f"{recipe.where('prune', 'quality')}: {e}") from None


class _StageCheckpoints:
    """Atomic per-stage checkpoints of a pipeline run, so an interrupted run can resume.

    After each completed stage the model is written as a compressed file
    (``STAGE.edlz``, lossless: fixed-width fields, fp32 values and codebooks), the
    weight snapshots as ``snapshots.npz``, and then ``state.json`` — the recipe's
    fingerprint and the completed stages' reports — each through a temporary file and a
    rename, so a kill at any moment leaves either the previous or the new state.
    """

    def __init__(self, directory: Any, recipe: Recipe, resume: bool, start: str | None = None) -> None:
        """Open ``directory``; with ``resume``, read what an earlier run completed there.

        Args:
            directory: the checkpoint directory (created with the first checkpoint written).
            recipe: the run's recipe; resuming needs the same one.
            resume: read the earlier state (else start afresh).
            start: a digest of the starting weights and data (:func:`_start_digest`);
                resuming needs the same one (``None``: not checked).
        """
        from pathlib import Path

        from ..core.files import declare_output_directory

        self.dir = Path(directory)
        declare_output_directory(self.dir)      # created with the first checkpoint written, not before
        self.fingerprint = json.dumps(recipe.data, sort_keys=True, default=str)
        self.start = start
        self.completed: dict[str, dict] = {}
        self.snapshots: dict[str, dict[str, np.ndarray]] = {}
        state_path = self.dir / "state.json"
        if not (resume and state_path.exists()):
            return
        again = "run without --resume to start again"
        try:
            state = json.loads(state_path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not a mapping")
            recipe_used, start_used = state.get("recipe"), state.get("start")
            completed = {d["stage"]: d for d in state.get("stages", [])}
            for fields in completed.values():
                _restored(fields)                   # every record must rebuild its report
            with np.load(self.dir / "snapshots.npz", allow_pickle=False) as z:
                for key in z.files:
                    layer, _, phase = key.rpartition("|")
                    self.snapshots.setdefault(layer, {})[phase] = z[key]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RecipeError(f"{self.dir}: damaged checkpoints ({type(e).__name__}); {again}") from None
        if recipe_used != self.fingerprint:
            raise RecipeError(f"{self.dir}: the checkpoints were made with another recipe; {again}")
        if start is not None and start_used != start:
            raise RecipeError(f"{self.dir}: the checkpoints were made from another starting model or data; {again}")
        self.completed = completed

    def load(self, stage: str, model: nn.Module) -> None:
        """Put the weights of completed ``stage`` into the plain ``model`` (masks and codebooks too)."""
        from ..format.container import load_into, read
        from .pruning.prune import apply_mask

        c = read(self.dir / f"{stage}.edlz")
        ties = tied_pairs(model)
        load_into(model, c)
        modules = dict(model.named_modules())
        masked = set(self.completed[stage].get("masked", []))
        for rec in c.layers:
            module_name, _, attr = rec.name.rpartition(".")
            module = modules.get(module_name)
            if rec.name in c.codebooks:        # weight sharing: the same codebook and indices again
                indices, codebook = c.codebooks[rec.name]
                bits = int(round(np.log2(codebook.size)))
                apply_shared_weight(module, attr, torch.from_numpy(codebook[1:].copy()), torch.from_numpy(indices), bits)
            elif rec.name in masked:            # pruning: the mask is where the stored weights are
                apply_mask(module, c.tensors[rec.name] != 0, attr)
        retie(ties)

    def save(self, report: StageReport, model: nn.Module, snapshots: dict[str, dict[str, np.ndarray]]) -> None:
        from ..format.container import atomic_write, encode

        atomic_write(self.dir / f"{report.stage}.edlz", encode(model, coding="fixed", infer_shared=False)[0])
        arrays = {f"{layer}|{phase}": w for layer, phases in snapshots.items() for phase, w in phases.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(self.dir / "snapshots.npz", buffer.getvalue())
        self.completed[report.stage] = {"stage": report.stage, "accuracy_before": report.accuracy_before,
                                        "accuracy_after": report.accuracy_after, "seconds": report.seconds,
                                        "settings": report.settings, "history": report.history,
                                        "original_bytes": report.original_bytes, "size_bytes": report.size_bytes,
                                        "layers": [dataclasses.asdict(layer) for layer in report.layers],
                                        "masked": [t.param_name for t in compressible_tensors(model)
                                                   if weight_mask(t.module, t.attr) is not None]}
        state = {"recipe": self.fingerprint, "start": self.start, "stages": list(self.completed.values())}
        atomic_write(self.dir / "state.json", json.dumps(state, default=str).encode())


def check_resume(checkpoint_dir: Any, recipe: Recipe) -> list[str]:
    """The stages an interrupted run completed in ``checkpoint_dir``, checked against ``recipe``.

    Raises:
        RecipeError: the checkpoints belong to another recipe or are unreadable.
    """
    completed = list(_StageCheckpoints(checkpoint_dir, recipe, resume=True).completed)
    _refuse_folded_resume(recipe, completed)
    return completed


def _refuse_folded_resume(recipe: Recipe, completed: list[str]) -> None:
    """Refuse to resume a run that folds BatchNorm: not supported yet."""
    key = "bn" if recipe.data.get("bn") == "fold" else "fold_batchnorm"
    if completed and (recipe.data.get("fold_batchnorm") or recipe.data.get("bn") == "fold"):
        raise RecipeError(f"{recipe.where(key)}: --resume does not support folding BatchNorm yet; "
                          "run without --resume")


def _start_digest(model: nn.Module, train_loader: Iterable, meta: dict[str, Any] | None) -> str:
    """SHA-256 of the starting weights, the data description and the training set's size."""
    digest = hashlib.sha256()
    for name, t in sorted(plain_copy(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps({"meta": meta or {}, "train_size": getattr(train_loader, "dataset_size", None)},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _restored(fields: dict) -> StageReport:
    return StageReport(stage=fields["stage"], accuracy_before=fields["accuracy_before"],
                       accuracy_after=fields["accuracy_after"], seconds=fields["seconds"],
                       settings=fields["settings"], history=fields["history"],
                       original_bytes=fields["original_bytes"], size_bytes=fields["size_bytes"],
                       layers=[LayerRecord(**layer) for layer in fields["layers"]])


def run(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    recipe: Recipe,
    pretrained: bool = False,
    progress: bool = True,
    log=print,
    meta: dict[str, Any] | None = None,
    checkpoint_dir: Any = None,
    resume: bool = False,
    loggers: Sequence = (),
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
        checkpoint_dir: write an atomic checkpoint after every stage there
            (see :class:`_StageCheckpoints`).
        resume: continue from the last stage completed in ``checkpoint_dir`` (the
            recipe must be the same); the result equals an uninterrupted run's.
        loggers: per-epoch loggers of every stage's (re)training (see :class:`~efficientdl.train.Trainer`).

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
        opts = {**defaults, **{k: section[k] for k in TRAINER_KEYS if k in section}}
        return Trainer(train_loader, test_loader, seed=seed, progress=progress, teacher=teacher, loggers=loggers,
                       **opts)

    original = parameter_bytes_fp32(model)
    samples = calibration_samples(recipe)
    calibration = _take_calibration(train_loader, samples) if samples is not None else None
    stages: list[StageReport] = []
    snapshots: dict[str, dict[str, np.ndarray]] = {}

    checkpoints = (_StageCheckpoints(checkpoint_dir, recipe, resume, _start_digest(model, train_loader, meta))
                   if checkpoint_dir is not None else None)
    if checkpoints is not None:
        snapshots = checkpoints.snapshots

    order = ["dense"] + [stage for stage in ("prune", "quantize") if r.get(stage) is not None]
    done_before = [stage for stage in order if checkpoints is not None and stage in checkpoints.completed]
    done_before = order[:len(done_before)] if done_before == order[:len(done_before)] else []
    _refuse_folded_resume(recipe, done_before)

    def completed(stage: str) -> StageReport | None:
        """The report of a stage an earlier run completed (its weights loaded if it was the last)."""
        if stage not in done_before:
            return None
        if stage == done_before[-1]:
            checkpoints.load(stage, model)
        log(f"{stage}: completed earlier ({checkpoints.dir / (stage + '.edlz')})")
        return _restored(checkpoints.completed[stage])

    def done(report: StageReport) -> None:
        if checkpoints is not None:
            checkpoints.save(report, model, snapshots)

    start = time.perf_counter()
    dense = completed("dense")
    if dense is None:
        dense = StageReport(stage="dense")
        if not pretrained and r.get("dense") is not None:
            dense.history = trainer(r["dense"], epochs=20, lr=0.05).fit(model, description="dense")
        dense.accuracy_after = evaluate(model, test_loader)
        dense.seconds = time.perf_counter() - start
        _stage_size(dense, model, index_bits, "fixed", original)
        for name, w in _nonzero_weights(model).items():
            snapshots[name] = {"original": w}
        done(dense)
    stages.append(dense)
    log(f"dense: accuracy {100 * dense.accuracy_after:.2f}%, {original} bytes of fp32 parameters")
    if r.get("fold_batchnorm") or r.get("bn") == "fold":
        from .fold import fold_batchnorm

        folded = fold_batchnorm(model)              # the same function, one layer fewer to compress around
        dense.settings["fold_batchnorm"] = folded
        log(f"BatchNorm folded: {len(folded['folded'])} layer(s); left: {', '.join(folded['left']) or 'none'}")
    if len(done_before) > 1:                 # resumed past dense: the teacher is the dense model
        from ..format.container import load_into, read

        teacher = load_into(plain_copy(model), read(checkpoints.dir / "dense.edlz")).eval()
    else:
        teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    reference: dict[str, Any] = {}
    originals: dict[str, torch.Tensor] = {}
    if calibration is not None:
        from .calibration import collect_statistics

        reference = collect_statistics(teacher, calibration)    # the dense layers' inputs, for output errors
        originals = {t.key: t.value.detach().clone() for t in compressible_tensors(teacher)}

    def after_stage(report: StageReport, section: dict) -> None:
        """Bias correction and BatchNorm re-estimation after a stage, then its output errors."""
        if section.get("bias_correction"):
            from .correction import correct_bias

            report.settings["bias_correction"] = correct_bias(model, originals, calibration)
        if r.get("bn") == "reestimate":
            from .correction import reestimate_batchnorm

            summary = reestimate_batchnorm(model, calibration)
            report.settings["bn_reestimated"] = {k: v for k, v in summary.items() if k != "values"}
        if reference:
            report.settings["output_error"] = _output_errors(model, reference, originals)
        if calibration is not None:
            report.settings["calibration_samples"] = sum(x.shape[0] for x in calibration)

    section = r.get("prune")
    resumed = completed("prune") if section is not None else None
    if resumed is not None:
        stages.append(resumed)
        section = None
    if section is not None:
        if post_training_prune(section):
            from .pruning.post_training import prune_post_training

            _, report = prune_post_training(model, calibration, sparsity=section.get("sparsity"),
                                            pattern=section.get("pattern"),
                                            method=section.get("method", "magnitude"),
                                            sequential=section.get("sequential", False),
                                            allocation=section.get("allocation", "uniform"))
            for name, w in _nonzero_weights(model).items():
                snapshots[name]["pruned"] = w
            t = trainer(section, teacher if section.get("distill") else None, epochs=0, lr=0.01)
            if t.epochs > 0:
                report.history = t.fit(model, description="prune fine-tune")
            how = f" ({report.settings['method']}, {len(calibration)} calibration batches)"
        else:
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
            how = ""
        after_stage(report, section)
        report.accuracy_before = dense.accuracy_after
        report.accuracy_after = evaluate(model, test_loader)
        _stage_size(report, model, index_bits, "fixed", original)
        stages.append(report)
        for name, w in _nonzero_weights(model).items():
            snapshots[name]["retrained"] = w
        done(report)
        log(f"prune{how}: accuracy {100 * report.accuracy_after:.2f}%, {report.size_bytes} bytes "
            f"({report.ratio:.1f}×)")

    section = r.get("quantize")
    resumed = completed("quantize") if section is not None else None
    if resumed is not None:
        stages.append(resumed)
        section = None
    if section is not None:
        t = trainer(section, teacher if section.get("distill") else None, epochs=0, lr=0.001, weight_decay=0.0)
        before = evaluate(model, test_loader)
        weighting, compensate = section.get("weighting", "none"), section.get("compensate", False)
        statistics = None
        if weighting != "none" or compensate:
            from .calibration import collect_statistics

            statistics = collect_statistics(model, calibration)     # the inputs of the model as pruned
        _, report = share(model, bits=section["bits"], init=section.get("init", "linear"), seed=seed,
                          finetune=(lambda m: t.fit(m, description="centroids")) if t.epochs > 0 else None,
                          weighting=weighting, statistics=statistics, compensate=compensate)
        statistics = None
        after_stage(report, section)
        report.accuracy_before = before
        report.accuracy_after = evaluate(model, test_loader)
        _stage_size(report, model, index_bits, "fixed", original)
        stages.append(report)
        for name, w in _nonzero_weights(model).items():
            snapshots[name]["quantized"] = w
        done(report)
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
