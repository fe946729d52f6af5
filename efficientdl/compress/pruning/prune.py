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

    Ties at the threshold are broken by position (a stable top-k), so the kept count
    is exact.

    Args:
        weight: the layer's (effective) weight.
        sparsity: fraction of weights to remove, in ``[0, 1]``.

    Returns:
        Boolean mask of the weight's shape.
    """
    n = weight.numel()
    keep = int(round((1.0 - sparsity) * n))
    mask = torch.zeros(n, dtype=torch.bool)
    if keep > 0:
        idx = torch.topk(weight.detach().abs().flatten(), keep, sorted=False).indices
        mask[idx] = True
    return mask.view_as(weight)


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
    w = weight.detach()
    alive = w[w != 0]
    threshold = quality * (alive.std() if alive.numel() > 1 else torch.tensor(0.0))
    return w.abs() > threshold


def _check_fraction(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RecipeError(f"{what} for '{name}' must be a number in [0, 1], got {value!r}")
    return float(value)


def prune_once(model: nn.Module, sparsity: Any = None, quality: Any = None) -> dict[str, float]:
    """Prune every selected tensor once, by target sparsity or by the std threshold.

    ``sparsity`` and ``quality`` may both be given as per-layer mappings, choosing the
    method layer by layer (``sparsity: {fc1: 0.92}``, ``quality: {fc2: 1.3}``); a tensor
    that both select is refused.

    Args:
        model: any ``nn.Module``; its weight matrices
            (:func:`~efficientdl.compress.layers.compressible_tensors`) are pruned.
        sparsity: per-layer target sparsity (scalar or mapping, see
            :func:`~efficientdl.compress.layers.layer_setting`). The layer ends with at
            least this sparsity (already-pruned weights stay pruned).
        quality: per-layer quality parameter ``q`` of the rule ``|w| > q·std(W)``.

    Returns:
        Mapping of tensor key to its sparsity after pruning.
    """
    if sparsity is None and quality is None:
        raise RecipeError("prune: give 'sparsity' or 'quality' (or both, for different layers)")
    for spec, what in ((sparsity, "sparsity"), (quality, "quality")):
        check_spec_keys(spec, model, what)
    result = {}
    ties = tied_pairs(model)
    for t in list(compressible_tensors(model)):
        s_value = tensor_setting(sparsity, t, "sparsity") if sparsity is not None else None
        q_value = tensor_setting(quality, t, "quality") if quality is not None else None
        if s_value is not None and q_value is not None:
            raise RecipeError(f"prune: both 'sparsity' and 'quality' select '{t.key}'; give each layer one")
        if s_value is None and q_value is None:
            continue
        w = t.value
        if s_value is not None:
            mask = magnitude_mask(w, _check_fraction(s_value, t.key, "sparsity"))
        else:
            if isinstance(q_value, bool) or not isinstance(q_value, (int, float)) or q_value < 0:
                raise RecipeError(f"quality for '{t.key}' must be a number ≥ 0, got {q_value!r}")
            mask = std_mask(w, float(q_value))
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
    if kind not in ("gradual", "linear"):
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
