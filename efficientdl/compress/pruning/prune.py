"""Magnitude pruning (Han, Pool, Tran, Dally, NIPS'15 "Learning both Weights and Connections").

A pruned layer carries a :class:`WeightMask` parametrization: the effective weight is
``W ⊙ M`` with a fixed 0/1 mask ``M``.  Its gradient with respect to the stored
weight is ``∂L/∂W ⊙ M``, so pruned connections receive no update; the stored weight
is also zeroed where ``M = 0``, so momentum and weight decay keep it at zero.  The
mask lives on the model (``torch.nn.utils.parametrize``), not in a side table.

Two ways to choose the mask of a layer:

* ``quality``: the paper's rule, threshold ``t = q · std(W)``; keep ``|w| > t``.
* ``sparsity``: keep the ``(1 − s) · n`` weights of largest magnitude.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.state import WeightMask, weight_mask  # noqa: F401  (re-exported: the stage's state)
from ...errors import RecipeError
from ...report.results import StageReport
from .criteria import (CRITERIA, SELECTIONS, PruningContext, magnitude_scores, parse_pattern,
                       select_per_layer, select_threshold)
from ..layers import check_spec_keys, compressible_tensors, retie, tensor_setting, tied_pairs


def apply_mask(module: nn.Module, mask: torch.Tensor, attr: str = "weight") -> None:
    """Prune ``module.<attr>`` to ``mask`` (intersected with any mask it already has).

    The stored tensor is zeroed where the mask is zero, then a :class:`WeightMask`
    parametrization is registered (or its buffer updated in place).

    Args:
        module: the module that registers the tensor.
        mask: boolean tensor of the tensor's shape; ``True`` keeps a connection.
        attr: the parameter's name on the module (``"weight"``, ``"weight_hh_l0"``, …).
    """
    mask = mask.to(torch.bool)
    existing = weight_mask(module, attr)
    if existing is not None:
        existing &= mask
        with torch.no_grad():
            module.parametrizations[attr].original.masked_fill_(~existing, 0.0)
        return
    with torch.no_grad():
        getattr(module, attr).masked_fill_(~mask, 0.0)
    parametrize.register_parametrization(module, attr, WeightMask(mask))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask that keeps the ``round((1 − sparsity) · n)`` weights of largest magnitude.

    The magnitude criterion with the per-layer selection
    (:mod:`~efficientdl.compress.pruning.criteria`).  Ties at the threshold are broken
    by position (a stable sort), so the kept count is exact.

    Args:
        weight: the layer's (effective) weight.
        sparsity: fraction of weights to remove, in ``[0, 1]``.

    Returns:
        Boolean mask of the weight's shape, on the weight's device.
    """
    return select_per_layer(magnitude_scores(weight), sparsity)


def std_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """The paper's threshold rule: keep ``|w| > q · std(W)``.

    The standard deviation is taken over the layer's surviving (nonzero) weights, so
    repeated pruning with the same quality keeps tightening as in the paper's
    iterative schedule.

    Args:
        weight: the layer's (effective) weight.
        quality: the quality parameter ``q ≥ 0``.

    Returns:
        Boolean mask of the weight's shape.
    """
    return select_threshold(magnitude_scores(weight), quality, weight)


#: how the pruning target grows over the steps (:func:`sparsity_schedule`)
SPARSITY_SCHEDULES = ("gradual", "linear")
#: how a tensor's pruning target is given → the mask selection it uses
TARGETS = {"sparsity": "per_layer", "quality": "threshold", "pattern": "n:m"}


def check_targets(sparsity: Any = None, quality: Any = None, pattern: Any = None, where: str = "",
                  names: tuple[str, str] = ("'sparsity'", "'quality'")) -> None:
    """The rule every entry point applies: each tensor gets exactly one target.

    ``sparsity`` (per-layer selection), ``quality`` (the threshold rule) and ``pattern``
    (``n:m``) may be combined only as per-layer mappings, choosing the method layer by
    layer; which tensors two mappings both select is checked on the model by
    :func:`prune_once`.

    Args:
        sparsity, quality, pattern: the settings as given (``None``: not given).
        where: prefix of the message (a recipe position), if any.
        names: how the first two settings are called where they were given (recipe keys
            or command-line flags).

    Raises:
        RecipeError: none given, or two given not both as per-layer mappings.
    """
    given = [v for v in (sparsity, quality, pattern) if v is not None]
    what, prefix = f"exactly one of {names[0]} and {names[1]}", f"{where}: " if where else ""
    if not given:
        raise RecipeError(f"{prefix}prune needs {what} per layer")
    if len(given) > 1 and not all(isinstance(v, Mapping) for v in given):
        raise RecipeError(f"{prefix}prune needs {what} per layer (both together only as per-layer mappings)")


def _check_fraction(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RecipeError(f"{what} for '{name}' must be a number in [0, 1], got {value!r}")
    return float(value)


def _target(t: Any, settings: dict[str, Any]) -> tuple[str, Any] | None:
    """The one ``(kind, value)`` a tensor's settings give it, or ``None`` when none selects it."""
    chosen = [(kind, tensor_setting(spec, t, kind)) for kind, spec in settings.items() if spec is not None]
    chosen = [(kind, value) for kind, value in chosen if value is not None]
    if len(chosen) > 1:
        a, b = chosen[0][0], chosen[1][0]
        raise RecipeError(f"prune: both '{a}' and '{b}' select '{t.key}'; give each layer one")
    if not chosen:
        return None
    kind, value = chosen[0]
    if kind == "sparsity":
        return kind, _check_fraction(value, t.key, "sparsity")
    if kind == "quality":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise RecipeError(f"quality for '{t.key}' must be a number ≥ 0, got {value!r}")
        return kind, float(value)
    try:
        return kind, parse_pattern(value)
    except ValueError as error:
        raise RecipeError(f"pattern for '{t.key}': {error}") from None


def pruning_targets(model: nn.Module, sparsity: Any = None, quality: Any = None,
                    pattern: Any = None) -> list[tuple[Any, str, Any]]:
    """The tensors of ``model`` the settings select, each with its one target.

    Args:
        model: the model.
        sparsity, quality, pattern: as for :func:`prune_once`.

    Returns:
        ``[(WeightTensor, kind, value), ...]`` in registration order, ``kind`` one of
        :data:`TARGETS`; tensors no setting covers are left out.

    Raises:
        RecipeError: a key names no layer, two settings select one tensor, or a value is
            out of range.
    """
    check_targets(sparsity, quality, pattern)
    settings = {"sparsity": sparsity, "quality": quality, "pattern": pattern}
    for kind, spec in settings.items():
        check_spec_keys(spec, model, kind)
    selected = []
    for t in list(compressible_tensors(model)):
        target = _target(t, settings)
        if target is not None:
            selected.append((t, *target))
    return selected


def prune_once(model: nn.Module, sparsity: Any = None, quality: Any = None, pattern: Any = None,
               criterion: str = "magnitude", statistics: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Prune every selected tensor once: score its weights, then select a mask.

    The criterion (:data:`~efficientdl.compress.pruning.criteria.CRITERIA`) scores each
    weight; the tensor's target picks the selection: ``sparsity`` keeps the highest
    ``(1 − s)·n`` scores, ``quality`` keeps ``score > q · std(W)`` (the paper's rule with
    the magnitude criterion), ``pattern`` keeps ``n`` of every ``m`` (``"2:4"``).  They
    may be combined as per-layer mappings, choosing the method layer by layer
    (``sparsity: {fc1: 0.92}``, ``quality: {fc2: 1.3}``); a tensor that two select is
    refused.  Already-pruned weights stay pruned (masks intersect).

    Args:
        model: any ``nn.Module``; its weight matrices
            (:func:`~efficientdl.compress.layers.compressible_tensors`) are pruned.
        sparsity: per-layer target sparsity (scalar or mapping, see
            :func:`~efficientdl.compress.layers.layer_setting`).
        quality: per-layer quality parameter ``q`` of the rule ``score > q·std(W)``.
        pattern: per-layer ``"N:M"`` pattern.
        criterion: the registered criterion's name (default ``"magnitude"``, ``|w|``).
        statistics: per tensor key, calibration statistics handed to the criterion.

    Returns:
        Mapping of tensor key to its sparsity after pruning.
    """
    scores_of = CRITERIA.get(criterion, "prune")
    targets = pruning_targets(model, sparsity, quality, pattern)
    result = {}
    ties = tied_pairs(model)
    for t, kind, value in targets:
        w = t.value
        scores = scores_of(w, PruningContext(t, (statistics or {}).get(t.key)))
        try:
            mask = SELECTIONS.get(TARGETS[kind])(scores, value, w)
        except ValueError as error:
            raise RecipeError(f"prune: '{t.key}': {error}") from None
        apply_mask(t.module, mask, t.attr)
        result[t.key] = 1.0 - float((t.value != 0).sum()) / w.numel()
    retie(ties)
    return result


def sparsity_schedule(final: Any, steps: int, kind: str = "gradual") -> list[Any]:
    """Per-step target sparsities of an iterative prune → retrain schedule.

    ``linear``: ``s_i = s · i / N``.  ``gradual`` (Zhu & Gupta 2017, polynomial):
    ``s_i = s · (1 − (1 − i/N)^3)``, which prunes fast while redundancy is high and
    slowly near the end.  Mappings are scheduled value by value.

    Args:
        final: the final per-layer sparsity (scalar or mapping).
        steps: number of pruning steps ``N ≥ 1``.
        kind: ``"gradual"`` or ``"linear"``.

    Returns:
        A list of ``N`` per-step sparsity specs, the last equal to ``final``.
    """
    if steps < 1:
        raise RecipeError(f"prune: steps must be ≥ 1, got {steps}")
    if kind not in SPARSITY_SCHEDULES:
        raise RecipeError(f"prune: schedule must be 'gradual' or 'linear', got {kind!r}")

    def at(value: float, i: int) -> float:
        f = i / steps
        return value * (f if kind == "linear" else 1.0 - (1.0 - f) ** 3)

    out = []
    for i in range(1, steps + 1):
        if isinstance(final, Mapping):
            out.append({k: at(v, i) for k, v in final.items()})
        else:
            out.append(at(final, i))
    return out


def prune(
    model: nn.Module,
    sparsity: Any = None,
    quality: Any = None,
    steps: int = 1,
    schedule: str = "gradual",
    retrain: Callable[[nn.Module, int], list[dict]] | None = None,
) -> tuple[nn.Module, StageReport]:
    """Iterative magnitude pruning with retraining: the first stage of Deep Compression.

    Each of ``steps`` rounds prunes every selected layer to the round's target (see
    :func:`sparsity_schedule`; with ``quality`` the same threshold rule is re-applied
    each round) and then calls ``retrain(model, step)``.  Masks stay on the model, so
    retraining never revives a pruned connection.

    Args:
        model: the model to prune, modified in place.
        sparsity: final per-layer sparsity (scalar or mapping by layer/type name).
        quality: per-layer quality ``q`` for the threshold ``q · std(W)`` instead.
        steps: number of prune → retrain rounds.
        schedule: ``"gradual"`` or ``"linear"`` sparsity schedule (sparsity only).
        retrain: called after each round with ``(model, step)``; returns per-epoch
            records (e.g. ``Trainer.fit``); ``None`` prunes without retraining.

    Returns:
        ``(model, report)``; ``report.settings["sparsity"]`` holds the achieved
        per-layer sparsity and ``report.history`` the retraining records.

    Example:
        >>> model, report = prune(model, sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74})
    """
    start = time.perf_counter()
    targets = sparsity_schedule(sparsity, steps, schedule) if sparsity is not None else [None] * steps
    history: list[dict] = []
    achieved: dict[str, float] = {}
    for step, target in enumerate(targets, start=1):
        achieved = prune_once(model, sparsity=target, quality=quality)
        if retrain is not None:
            for record in retrain(model, step) or []:
                history.append({"step": step, **record})
    report = StageReport(
        stage="prune",
        history=history,
        seconds=time.perf_counter() - start,
        settings={"sparsity": achieved, "steps": steps, "schedule": schedule,
                  "quality": quality},
    )
    return model, report


def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    sparsities: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    layers: Sequence[str] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Per-layer pruning sensitivity: accuracy when only one layer is pruned.

    For each layer and each sparsity, a copy of the model has that one layer pruned
    by magnitude (no retraining) and is evaluated.  Layers whose accuracy falls fast
    are sensitive and should keep more weights (Han et al. NIPS'15, Figure 6).

    Args:
        model: a trained model (not modified).
        evaluate: returns the accuracy of a model (e.g. on a validation loader).
        sparsities: sparsities to try.
        layers: names of the layers to analyse (default: all prunable layers).

    Returns:
        Mapping of layer name to a list of ``(sparsity, accuracy)`` pairs.
    """
    names = [t.key for t in compressible_tensors(model)]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise RecipeError(f"sensitivity: no prunable layer named {unknown[0]!r} (known: {', '.join(names)})")
        names = list(layers)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        curve = []
        for s in sparsities:
            trial = copy.deepcopy(model)
            t = next(t for t in compressible_tensors(trial) if t.key == name)
            apply_mask(t.module, magnitude_mask(t.value, _check_fraction(s, name, "sparsity")), t.attr)
            curve.append((float(s), float(evaluate(trial))))
        curves[name] = curve
    return curves


def sparsities_from_sensitivity(
    curves: Mapping[str, Sequence[tuple[float, float]]], max_drop: float
) -> dict[str, float]:
    """Choose per-layer sparsities from sensitivity curves.

    For each layer, the largest sparsity whose accuracy is within ``max_drop`` of the
    layer's unpruned accuracy (the first point of its curve, sparsity 0).

    Args:
        curves: output of :func:`sensitivity`.
        max_drop: largest accepted accuracy drop (fraction, e.g. 0.01).

    Returns:
        Mapping of layer name to chosen sparsity.
    """
    chosen = {}
    for name, curve in curves.items():
        base = max(acc for s, acc in curve if s == min(x for x, _ in curve))
        ok = [s for s, acc in curve if base - acc <= max_drop]
        chosen[name] = max(ok) if ok else 0.0
    return chosen
