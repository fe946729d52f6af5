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

    Returns:
        ``(model, report)``: ``report.stage == "prune"``; ``report.settings`` holds
        ``sparsity`` (achieved, per tensor), ``reconstruction_error`` (per tensor,
        ``‖(W − Ŵ)X‖_F / ‖W X‖_F`` on the calibration inputs, see
        :func:`reconstruction_error`), ``samples`` (sample vectors per tensor),
        ``method``, ``pattern``, ``sequential`` and ``not_covered``.

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
                  "reconstruction_error": errors, "samples": samples, "not_covered": not_covered},
    )
    return model, report
