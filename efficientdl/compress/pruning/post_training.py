"""One-shot pruning of a trained network from unlabeled calibration samples, no retraining.

Three methods, all layer by layer on the statistics of
:func:`~efficientdl.compress.calibration.collect_statistics`:

* ``obs`` — SparseGPT-style reconstruction (Hassibi & Stork 1993; Frantar & Alistarh,
  ICML'23): :func:`~efficientdl.compress.pruning.obs.obs_prune` removes weights and
  updates the rest of each row to keep the layer's output;
* ``wanda`` — ``|W_ij| · ‖X_j‖₂`` ranked per output row (Sun, Liu, Bair, Kolter 2023),
  no update;
* ``magnitude`` — ``|w|`` per layer (Han et al., NIPS'15), no update; the baseline.

The result is the same :class:`~efficientdl.core.state.WeightMask` parametrization as
:func:`~efficientdl.compress.pruning.prune.prune`, so retraining, the file and the
runtime work unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import RecipeError
from ...report.results import StageReport
from ..calibration import Statistics, collect_statistics, is_covered
from ..layers import fold_parametrization, retie, tied_pairs
from .criteria import PruningContext, magnitude_scores, select_n_m, select_per_layer, select_per_row, wanda_scores
from .obs import obs_prune
from .prune import apply_mask, pruning_targets, weight_mask

METHODS = ("obs", "wanda", "magnitude")
#: how a network-wide sparsity is spread over its layers: the same everywhere, or by the layers' error curves
ALLOCATIONS = ("uniform", "error")
#: the sparsities at which ``allocation="error"`` measures each layer's error curve
ALLOCATION_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def allocate_sparsity(curves: dict[str, dict[float, float]], sizes: dict[str, int], target: float) -> dict[str, float]:
    """Per-layer sparsities that reach a network-wide sparsity at the least summed layer error.

    Non-uniform layer-wise compression from a *compression database* (Frantar & Alistarh,
    "Optimal Brain Compression", NeurIPS'22, §5: each layer pruned at a grid of levels,
    its error recorded, then a solver picks one level per layer under the global budget).
    Given, for every layer ``l`` with ``n_l`` weights, its squared relative reconstruction
    error ``e_l(s)`` at the grid sparsities ``s``, choose ``s_l`` to

        minimise  Σ_l e_l(s_l)   subject to   Σ_l n_l s_l = target · Σ_l n_l.

    Greedy on the marginal cost: start every layer at its lowest grid sparsity, then
    repeatedly move the layer whose next grid step costs the least added error per weight
    pruned, ``(e_l(s') − e_l(s)) / ((s' − s) n_l)``, one step up; the last step is cut to
    the weights still needed (a sparsity between two grid points).  For convex curves this
    is the exact optimum of the problem with each curve linear between its grid points (a
    fractional knapsack: the cheapest error per weight first); the curves measured on real
    layers are close to convex.

    Args:
        curves: layer → ``{sparsity: squared relative error}``, the same grid for every
            layer, its lowest point at or below ``target``.
        sizes: layer → number of weights.
        target: the network-wide fraction of weights to remove, in ``[0, 1)``.

    Returns:
        layer → sparsity; ``Σ n_l s_l`` equals ``target · Σ n_l`` (up to rounding) unless
        every layer is at the top of the grid.
    """
    grid = sorted(next(iter(curves.values())))
    level = {k: 0 for k in curves}
    total = sum(sizes[k] for k in curves)
    sparsity = {k: grid[0] for k in curves}
    needed = target * total - grid[0] * total
    while needed > 1e-9:
        best = None
        for k in curves:
            i = level[k]
            if i + 1 < len(grid):
                step = (grid[i + 1] - grid[i]) * sizes[k]
                cost = (curves[k][grid[i + 1]] - curves[k][grid[i]]) / step
                if best is None or cost < best[0]:
                    best = (cost, k, step)
        if best is None:
            break
        _, k, step = best
        level[k] += 1
        if step >= needed:                      # the last step: only the weights still needed
            sparsity[k] = grid[level[k] - 1] + needed / sizes[k]
            break
        sparsity[k] = grid[level[k]]
        needed -= step
    return sparsity


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, stats: Statistics) -> float:
    """Relative output error of a changed weight on the calibration inputs, from ``H``:

        ‖(W − Ŵ) X‖_F / ‖W X‖_F = sqrt( tr((W − Ŵ) H (W − Ŵ)ᵀ) / tr(W H Wᵀ) )

    (per group and summed for a grouped convolution).

    Args:
        weight: the original weight ``W`` (a convolution's flattened to rows).
        new_weight: the pruned (and updated) ``Ŵ``.
        stats: the statistics of the layer's inputs, with the Gram matrix.

    Returns:
        The relative error (0 when ``W X = 0``).
    """
    rows = weight.shape[0]
    W = weight.detach().reshape(rows, -1).to(torch.float64)
    D = W - new_weight.detach().reshape(rows, -1).to(torch.float64)
    per = rows // stats.groups
    num = den = 0.0
    for g in range(stats.groups):
        H = stats.group_gram(g).to(W.device)
        w, dw = W[g * per:(g + 1) * per], D[g * per:(g + 1) * per]
        num += float(((dw @ H) * dw).sum())
        den += float(((w @ H) * w).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


def _prune_tensor(weight: torch.Tensor, stats: Statistics, kind: str, value: Any, method: str,
                  block: int, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_weight, kept mask)`` of one tensor by one method."""
    if method == "obs":
        rows, groups = weight.shape[0], stats.groups
        per, flat = rows // groups, weight.detach().reshape(rows, -1)
        target = {"sparsity": value} if kind == "sparsity" else {"pattern": value}
        parts = [obs_prune(flat[g * per:(g + 1) * per], stats.group_gram(g), block=block, damp=damp, **target)
                 for g in range(groups)]
        new = torch.cat([p[0] for p in parts]).reshape(weight.shape)
        return new, torch.cat([p[1] for p in parts]).reshape(weight.shape)
    if method == "wanda":
        scores = wanda_scores(weight, PruningContext(None, stats))
        mask = select_per_row(scores, value) if kind == "sparsity" else select_n_m(scores, value)
    else:
        scores = magnitude_scores(weight)
        mask = select_per_layer(scores, value) if kind == "sparsity" else select_n_m(scores, value)
    return weight.detach() * mask, mask


def _allocated(covered: dict, stats: dict, target: float, method: str, block: int, damp: float) -> dict:
    """``covered`` with each tensor's sparsity from its error curve (``allocation="error"``)."""
    curves, sizes = {}, {}
    for key, (t, kind, _) in covered.items():
        w = t.value.detach()
        curves[key] = {}
        for s in ALLOCATION_GRID:
            try:
                new, _ = _prune_tensor(w, stats[key], kind, s, method, block, damp)
            except ValueError as error:
                raise RecipeError(f"prune: '{key}': {error}") from None
            curves[key][s] = reconstruction_error(w, new, stats[key]) ** 2
        sizes[key] = w.numel()
    chosen = allocate_sparsity(curves, sizes, target)
    return {key: (t, kind, chosen[key]) for key, (t, kind, _) in covered.items()}


def _write(module: nn.Module, attr: str, value: torch.Tensor, mask: torch.Tensor) -> None:
    """Store ``value`` as the tensor and prune it to ``mask`` (intersected with an existing mask)."""
    old = weight_mask(module, attr)
    if old is not None:
        mask = mask & old.to(mask.device)
    if parametrize.is_parametrized(module, attr):
        fold_parametrization(module, attr)  # a method that changes the values folds first
    with torch.no_grad():
        getattr(module, attr).copy_(value.to(getattr(module, attr).dtype))
    apply_mask(module, mask, attr)


def prune_post_training(
    model: nn.Module,
    calibration: Iterable[Any],
    sparsity: Any = None,
    pattern: Any = None,
    method: str = "obs",
    sequential: bool = False,
    block: int = 128,
    damp: float = 0.01,
    max_batches: int | None = None,
    statistics: dict[str, Statistics] | None = None,
    allocation: str = "uniform",
) -> tuple[nn.Module, StageReport]:
    """Prune a trained network in one shot from unlabeled calibration samples (no labels, no retraining).

    The statistics of every selected covered weight are collected
    (:func:`~efficientdl.compress.calibration.collect_statistics`: ``H = Σ x xᵀ`` of the
    inputs ``x`` each weight multiplies — a linear layer's input, a convolution's im2col
    patches, a recurrent gate matrix's ``x_t`` or ``h_{t−1}``, attention's
    query/key/value per row block of ``in_proj_weight`` and the concatenated heads for
    ``out_proj``), then each tensor is pruned by ``method``:

    * ``"obs"``: SparseGPT (Frantar & Alistarh, ICML'23) — Optimal Brain Surgeon
      (Hassibi & Stork 1993) column by column, removing weights by ``w² / U_jj²`` and
      updating the rest of the row to reconstruct ``W X``
      (:func:`~efficientdl.compress.pruning.obs.obs_prune`);
    * ``"wanda"``: Wanda (Sun, Liu, Bair, Kolter 2023) — keep the highest
      ``|W_ij| · ‖X_j‖₂`` of each output row (or of each ``n:m`` group); no update;
    * ``"magnitude"``: keep the highest ``|w|`` of the layer (Han et al., NIPS'15); no update.

    The result is a :class:`~efficientdl.core.state.WeightMask` on each pruned tensor
    (for ``obs`` over the updated weight), as :func:`~efficientdl.compress.pruning.prune.prune`
    leaves it.  Masks already on the model are kept (intersected).

    ``sequential=True`` prunes the layers in execution order and gathers each layer's
    statistics on the outputs of the already-pruned earlier layers (SparseGPT's
    sequential mode): one calibration pass per layer after one that finds the execution
    order, i.e. ``L + 1`` forward passes of the whole model over the calibration data for
    ``L`` layers (acceptable on small models; SparseGPT's block-by-block propagation of
    the activations is not implemented), holding one layer's ``H`` at a time.  Without
    it, one pass gathers every layer's ``H`` at once (memory ``Σ d²`` float64).  ``calibration`` must then be
    re-iterable (a list or a ``DataLoader``, not a generator).

    Covered are the ``weight`` of ``nn.Linear`` and ``nn.Conv2d`` layers (subclasses and
    grouped/depthwise convolutions included), the gate matrices ``weight_ih_l*`` /
    ``weight_hh_l*`` of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (without ``proj_size``), and
    ``in_proj_weight`` (its query/key/value row blocks each on their own input),
    ``q/k/v_proj_weight`` and ``out_proj`` of ``nn.MultiheadAttention``
    (:func:`~efficientdl.compress.calibration.is_covered`).  Other selected tensors
    (embeddings, Conv1d/3d, matrices on custom modules, LSTM projections) are left dense
    and listed in ``report.settings["not_covered"]``.

    Args:
        model: the trained model, modified in place.
        calibration: an iterable of batches (tensors, or ``(x, y)`` with labels ignored).
        sparsity: per-layer sparsity (a scalar or a mapping by layer name / pattern / type,
            as :func:`~efficientdl.compress.pruning.prune.prune_once`).
        pattern: per-layer ``"N:M"`` pattern (keep ``N`` of every ``M``) instead.
        method: ``"obs"``, ``"wanda"`` or ``"magnitude"``.
        sequential: calibrate each layer on the already-pruned earlier layers.
        block: columns per block of ``obs``.
        damp: the dampening of ``obs`` (``λ = damp · mean(diag H)``).
        max_batches: calibration batches per pass (default: all).
        statistics: statistics already collected on this model's layers with their Gram
            matrices (:func:`~efficientdl.compress.calibration.collect_statistics`), to
            prune at several settings from one calibration pass; tensors they lack are
            collected.  Not with ``sequential``, which needs fresh statistics per layer.
        allocation: ``"uniform"`` (every layer at its ``sparsity``) or ``"error"``: one
            ``sparsity`` (a number, or the same number for every selected tensor) spread
            over the covered tensors by their measured error curves — each tensor pruned
            by ``method`` at every sparsity of :data:`ALLOCATION_GRID`, then
            :func:`allocate_sparsity` (OBC's compression database and solver); small,
            sensitive layers keep more weights, large ones give more.  Costs
            ``len(ALLOCATION_GRID)`` extra prunings per tensor.  Not with ``pattern`` or
            ``sequential``.

    Returns:
        ``(model, report)``: ``report.stage == "prune"``; ``report.settings`` holds
        ``sparsity`` (achieved, per tensor), ``reconstruction_error`` (per tensor,
        ``‖(W − Ŵ)X‖_F / ‖W X‖_F`` on the calibration inputs, see
        :func:`reconstruction_error`), ``samples`` (sample vectors per tensor),
        ``method``, ``pattern``, ``sequential``, ``allocation`` and ``not_covered``.

    Raises:
        RecipeError: an unknown method, bad settings, no calibration data, a layer that
            never runs on it, or a one-pass iterable with ``sequential=True``.

    Example:
        >>> model, report = prune_post_training(model, loader, sparsity=0.5, method="obs")
        >>> report.settings["reconstruction_error"]["fc1"]
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise RecipeError(f"prune: method must be one of {', '.join(METHODS)}, got {method!r}")
    if sequential and iter(calibration) is calibration:
        raise RecipeError("prune: sequential calibration runs the data once per layer; "
                          "give a list or a DataLoader, not a one-pass iterator")
    if sparsity is None and pattern is None:
        raise RecipeError("prune: post-training pruning needs 'sparsity' or 'pattern' per layer")
    if statistics is not None and sequential:
        raise RecipeError("prune: sequential calibration collects its own statistics; do not pass 'statistics'")
    if allocation not in ALLOCATIONS:
        raise RecipeError(f"prune: allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "error":
        if pattern is not None or sequential:
            raise RecipeError("prune: allocation 'error' spreads one sparsity over the layers: "
                              "not with 'pattern' or 'sequential'")
    targets = pruning_targets(model, sparsity, None, pattern)
    covered = {t.key: (t, kind, value) for t, kind, value in targets if is_covered(t, model)}
    not_covered = [t.key for t, _, _ in targets if t.key not in covered]
    ties = tied_pairs(model)
    achieved: dict[str, float] = {}
    errors: dict[str, float] = {}
    samples: dict[str, int] = {}
    if covered:
        # sequential: the first pass only finds the execution order (norms, no H held for every layer)
        given = {k: v for k, v in (statistics or {}).items() if k in covered and v.gram is not None}
        missing = [k for k in covered if k not in given]
        stats = collect_statistics(model, calibration, keys=missing, max_batches=max_batches,
                                   gram=not sequential) if missing else {}
        stats = {**given, **stats}         # without sequential each layer is pruned on its own inputs
        if allocation == "error":
            values = {value for _, _, value in covered.values()}
            if len(values) != 1 or not 0 <= next(iter(values)) < 1:
                raise RecipeError(f"prune: allocation 'error' spreads one sparsity in [0, 1) over the selected "
                                  f"layers, got {sorted(values)}")
            covered = _allocated(covered, stats, float(next(iter(values))), method, block, damp)
        for key in list(stats):
            if sequential:
                stats[key] = collect_statistics(model, calibration, keys=[key], max_batches=max_batches)[key]
            t, kind, value = covered[key]
            w = t.value.detach().clone()
            try:
                new, mask = _prune_tensor(w, stats[key], kind, value, method, block, damp)
            except ValueError as error:
                raise RecipeError(f"prune: '{key}': {error}") from None
            _write(t.module, t.attr, new, mask)
            final = t.value.detach()
            achieved[key] = 1.0 - float((final != 0).sum()) / final.numel()
            errors[key] = reconstruction_error(w, final, stats[key])
            samples[key] = stats[key].count
            if key not in given:
                stats[key] = None  # free H before the next layer
    retie(ties)
    report = StageReport(
        stage="prune",
        seconds=time.perf_counter() - start,
        settings={"method": method, "sparsity": achieved, "pattern": pattern, "sequential": sequential,
                  "allocation": allocation,
                  "reconstruction_error": errors, "samples": samples, "not_covered": not_covered},
    )
    return model, report
