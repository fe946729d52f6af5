"""What to prune: a *criterion* scores each weight, a *selection* turns scores into a mask.

The two are separate, as PyTorch separates ``importance_scores`` from
``global_unstructured`` in ``torch.nn.utils.prune``: any criterion works with any
selection.

Criteria (:data:`CRITERIA`, name → ``scores(weight, context) -> tensor``; a higher
score means more important, kept first):

* ``magnitude`` — ``|w|`` (Han et al., NIPS'15).

A criterion receives a :class:`PruningContext`, which names the tensor and can carry
statistics of calibration data for post-training criteria (an input Gram matrix, input
norms), so that such a criterion is one more entry here.

Selections (:data:`SELECTIONS`, name → ``select(scores, amount) -> bool mask``):

* ``per_layer`` — keep the ``round((1 − s) · n)`` highest scores of the tensor
  (``amount`` = the sparsity ``s``); ties broken by position, so the count is exact;
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
