"""What to prune: a *criterion* scores each weight, a *selection* turns scores into a mask.

The two are separate, as PyTorch separates ``importance_scores`` from
``global_unstructured`` in ``torch.nn.utils.prune``: any criterion works with any
selection.

Criteria (:data:`CRITERIA`, name → ``scores(weight, context) -> tensor``; a higher
score means more important, kept first):

* ``magnitude`` — ``|w|`` (Han et al., NIPS'15);
* ``wanda`` — ``|W_ij| · ‖X_j‖₂`` (Sun, Liu, Bair, Kolter 2023), from calibration
  statistics; meant with the ``per_row`` selection, as the paper compares weights per
  output row (``prune_post_training(method="wanda")`` does so; ``prune_once`` with a
  ``sparsity`` selects per layer, the paper's weaker variant);
* ``obs`` — Optimal Brain Surgeon's saliency ``w_ij² / [H⁻¹]_jj`` (Hassibi & Stork
  1993) without the weight update; the method with the update is
  :func:`~efficientdl.compress.pruning.obs.obs_prune`.

A criterion receives a :class:`PruningContext`, which names the tensor and can carry
statistics of calibration data for post-training criteria (an input Gram matrix, input
norms), so that such a criterion is one more entry here.

Selections (:data:`SELECTIONS`, name → ``select(scores, amount) -> bool mask``):

* ``per_layer`` — keep the ``round((1 − s) · n)`` highest scores of the tensor
  (``amount`` = the sparsity ``s``); ties broken by position, so the count is exact;
* ``per_row`` — keep the ``round((1 − s) · d)`` highest scores of each output row (the
  tensor flattened to rows of ``in_features · kh · kw``), Wanda's comparison group;
* ``threshold`` — the paper's rule: keep ``score > q · std(surviving weights)``
  (``amount`` = the quality ``q``); with the magnitude criterion ``|w| > q · std(W)``;
* ``n:m`` — keep the ``n`` highest scores of every group of ``m`` consecutive weights
  along the input dimension (``amount`` = ``(n, m)``; 2:4 is what sparse tensor cores run).

:func:`global_mask` selects one threshold over several tensors at once (a model-wide
sparsity, Frankle & Carbin's "global" pruning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ...core.registry import Registry
from ...core.tensors import WeightTensor
from ...errors import RecipeError

Scores = Callable[[torch.Tensor, "PruningContext"], torch.Tensor]
Selection = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PruningContext:
    """What a criterion may read besides the weight.

    Attributes:
        tensor: the tensor being pruned (its key, module and attribute), when known.
        statistics: statistics of calibration inputs for this tensor (e.g. the input
            Gram matrix ``H = Σ x xᵀ`` or the input norms ``‖X_j‖₂``), or ``None``.
    """

    tensor: WeightTensor | None = None
    statistics: Any = None


CRITERIA: Registry[Scores] = Registry("pruning criterion")
SELECTIONS: Registry[Selection] = Registry("mask selection")


@CRITERIA.register("magnitude", help="|w| (Han et al., NIPS'15)")
def magnitude_scores(weight: torch.Tensor, context: PruningContext | None = None) -> torch.Tensor:
    """The magnitude criterion: ``score(w) = |w|``.

    Args:
        weight: the (effective) weight.
        context: unused.

    Returns:
        ``|weight|``, detached.
    """
    return weight.detach().abs()


def _statistics_of(context: "PruningContext | None", criterion: str) -> Any:
    stats = None if context is None else context.statistics
    if stats is None:
        where = f" for '{context.tensor.key}'" if context is not None and context.tensor is not None else ""
        raise RecipeError(f"prune: criterion '{criterion}' needs calibration statistics{where}")
    return stats


@CRITERIA.register("wanda", help="|W_ij| · ‖X_j‖₂ from calibration inputs (Sun et al. 2023); use per_row")
def wanda_scores(weight: torch.Tensor, context: PruningContext | None = None) -> torch.Tensor:
    """Wanda (Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for
    Large Language Models"): ``score_ij = |W_ij| · ‖X_j‖₂``, the weight's magnitude times
    the norm of the calibration inputs it multiplies.  The paper ranks the scores within
    each output row: use it with the ``per_row`` selection (or ``n:m``).

    Args:
        weight: ``[rows, d]`` or a convolution's weight (rows of ``C_in·kh·kw``, the column
            order of ``F.unfold``).
        context: ``context.statistics`` is a
            :class:`~efficientdl.compress.calibration.Statistics` (grouped convolutions
            included) or a tensor of the column norms ``‖X_j‖₂`` (``[d]``).

    Returns:
        The scores, of the weight's shape and dtype.

    Raises:
        RecipeError: no statistics.
    """
    stats = _statistics_of(context, "wanda")
    rows = weight.shape[0]
    if isinstance(stats, torch.Tensor):
        norms = stats.reshape(1, -1).expand(rows, -1)
    else:
        norms = stats.row_norms(rows)
    w = weight.detach().reshape(rows, -1)
    return (w.abs() * norms.to(device=w.device, dtype=w.dtype)).reshape(weight.shape)


@CRITERIA.register("obs", help="w² / [H⁻¹]_jj, Optimal Brain Surgeon's saliency without the update")
def obs_scores(weight: torch.Tensor, context: PruningContext | None = None) -> torch.Tensor:
    """Optimal Brain Surgeon's saliency (Hassibi & Stork 1993) ``w_ij² / [H⁻¹]_jj``: the
    increase of the layer's squared output error when the weight alone is removed and
    its row re-optimised.  Only the score: the method that also updates the remaining
    weights is :func:`~efficientdl.compress.pruning.obs.obs_prune`.

    Args:
        weight: ``[rows, d]`` or a convolution's weight (groups = 1).
        context: ``context.statistics`` is a
            :class:`~efficientdl.compress.calibration.Statistics` with its Gram matrix,
            or the Gram matrix ``H`` itself.

    Returns:
        The saliency, of the weight's shape and dtype (dampened ``H``, ``damp = 0.01``).

    Raises:
        RecipeError: no statistics.
    """
    from .obs import obs_saliency

    stats = _statistics_of(context, "obs")
    if isinstance(stats, torch.Tensor):
        return obs_saliency(weight, stats).to(weight.dtype)
    rows, groups = weight.shape[0], stats.groups
    w, per = weight.reshape(rows, -1), rows // groups
    parts = [obs_saliency(w[g * per:(g + 1) * per], stats.group_gram(g)) for g in range(groups)]
    return torch.cat(parts).reshape(weight.shape).to(weight.dtype)


def _keep_highest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` highest scores; equal scores are kept in position order."""
    flat = scores.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask.view_as(scores)


@SELECTIONS.register("per_layer", help="keep the (1 − s)·n highest scores of each tensor")
def select_per_layer(scores: torch.Tensor, sparsity: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``round((1 − sparsity) · n)`` highest scores (ties broken by position).

    Args:
        scores: the criterion's scores, of the weight's shape.
        sparsity: the fraction to remove, in ``[0, 1]``.
        weight: unused.

    Returns:
        Boolean mask of the scores' shape and device.
    """
    return _keep_highest(scores, int(round((1.0 - sparsity) * scores.numel())))


@SELECTIONS.register("per_row", help="keep the (1 − s)·d highest scores of each output row (Wanda)")
def select_per_row(scores: torch.Tensor, sparsity: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``round((1 − sparsity) · d)`` highest scores of every output row (the
    tensor flattened to rows of ``d = in_features · kh · kw``; ties by position).
    Wanda's comparison group (Sun et al. 2023, §3).

    Args:
        scores: the criterion's scores, at least 2-D.
        sparsity: the fraction of each row to remove, in ``[0, 1]``.
        weight: unused.

    Returns:
        Boolean mask of the scores' shape with the same count kept in every row.
    """
    rows = scores.reshape(scores.shape[0], -1)
    keep = int(round((1.0 - sparsity) * rows.shape[1]))
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return mask.reshape(scores.shape)


@SELECTIONS.register("threshold", help="keep score > q · std of the surviving weights (the paper's rule)")
def select_threshold(scores: torch.Tensor, quality: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's rule: keep ``score > q · std(W)``, the standard deviation taken over the
    tensor's surviving (nonzero) weights, so that repeated pruning with the same ``q``
    keeps tightening, as in the paper's iterative schedule.

    Args:
        scores: the criterion's scores (``|w|`` for the paper's rule).
        quality: the quality parameter ``q ≥ 0``.
        weight: the weight whose surviving values give the standard deviation
            (default: the scores themselves).

    Returns:
        Boolean mask of the scores' shape.
    """
    w = (scores if weight is None else weight).detach()
    alive = w[w != 0]
    threshold = quality * (alive.std() if alive.numel() > 1 else torch.tensor(0.0, device=w.device))
    return scores > threshold


@SELECTIONS.register("n:m", help="keep the n highest scores of every m consecutive weights of a row")
def select_n_m(scores: torch.Tensor, pattern: tuple[int, int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """Semi-structured ``n:m`` sparsity: in every group of ``m`` consecutive weights along
    the input dimension (the tensor flattened to rows of ``in_features · kh · kw``), keep the
    ``n`` highest scores (ties by position).

    Args:
        scores: the criterion's scores, at least 2-D; the row length must be a multiple of ``m``.
        pattern: ``(n, m)`` with ``0 ≤ n ≤ m``.
        weight: unused.

    Returns:
        Boolean mask with exactly ``n`` kept entries in every group.

    Raises:
        ValueError: the row length is not a multiple of ``m``.
    """
    n, m = pattern
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"a row of {rows.shape[1]} weights does not split into groups of {m}")
    groups = rows.reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, order[:, :n], True)
    return mask.reshape(scores.shape)


def parse_pattern(text: Any) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``.

    Raises:
        ValueError: not ``N:M`` with integers ``0 ≤ N ≤ M``, ``M ≥ 1``.
    """
    parts = str(text).split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected a pattern N:M such as 2:4, got {text!r}") from None
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"expected a pattern N:M with 0 ≤ N ≤ M, got {text!r}")
    return n, m


def global_mask(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold over several tensors: keep the ``round((1 − s) · Σ n_i)`` highest
    scores of all of them together (ties by position, tensors in the given order).

    Args:
        scores: the criterion's scores of each tensor.
        sparsity: the fraction of all their weights to remove.

    Returns:
        One boolean mask per tensor.
    """
    if not scores:
        return []
    flat = torch.cat([s.flatten().to(scores[0].device) for s in scores])
    kept = _keep_highest(flat, int(round((1.0 - sparsity) * flat.numel())))
    out, start = [], 0
    for s in scores:
        out.append(kept[start:start + s.numel()].view_as(s).to(s.device))
        start += s.numel()
    return out
