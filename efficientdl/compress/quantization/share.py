"""Trained quantization by weight sharing (Han, Mao, Dally, ICLR'16 "Deep Compression", §3).

Per layer, the surviving (nonzero) weights are clustered by one-dimensional k-means
into ``2^b − 1`` shared values; codebook entry 0 is the exact zero of the pruned
connections (the convention of EIE, Han et al. ISCA'16).  Each weight is then stored
as a ``b``-bit index.  The layer carries a :class:`SharedWeight` parametrization

    W[i] = C[I[i]],   C = (0, c_1, …, c_K),

with fixed assignments ``I`` (a buffer) and trainable centroids ``c`` (a parameter).
Autograd through the gather gives exactly the paper's centroid update

    ∂L/∂c_k = Σ_{i : I[i] = k} ∂L/∂W[i]        (group by cluster, reduce by sum),

and pruned weights (index 0) stay exactly zero.

Post-training variants, from the statistics of unlabeled calibration inputs
(:func:`~efficientdl.compress.calibration.collect_statistics`, ``H = X Xᵀ`` of the inputs
each weight row multiplies):

* Hessian-weighted k-means (Choi, El-Khamy & Lee, ICLR'17, "Towards the Limit of
  Network Quantization"): the clusters minimise ``Σ_ij h_ij (W_ij − c_{l(ij)})²`` with
  ``h_ij = H_jj = ‖X_j‖²``, the diagonal of the Hessian of the layer's output error
  ``‖W X − Ŵ X‖²`` (up to the factor 2), instead of the plain squared error;
* error compensation (Frantar, Singh & Alistarh, NeurIPS'22, "Optimal Brain
  Compression", and GPTQ, ICLR'23): with the codebook fixed, the columns are rounded to
  the nearest codebook value left to right, and each column's rounding error is moved
  onto the columns to its right by Optimal Brain Surgeon's update (:func:`compensated_indices`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import numba
import numpy as np
import torch
from torch import nn

from ...core.state import SharedWeight, apply_shared_weight, shared_weight  # noqa: F401  (re-exported)
from ...errors import RecipeError
from ...report.results import StageReport
from ..calibration import Statistics
from ..layers import check_spec_keys, compressible_tensors, fold_parametrization, retie, tensor_setting, tied_pairs
from ..pruning.obs import dampened_inverse_factor
from ..pruning.post_training import reconstruction_error

INITS = ("linear", "density", "random")
WEIGHTINGS = ("none", "hessian")


@numba.njit(cache=True)
def _prefix_sums(xs: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    out = np.empty(xs.size + 1, np.float64)
    acc = 0.0
    out[0] = 0.0
    for i in range(xs.size):
        acc += xs[i]
        out[i + 1] = acc
    return out


@numba.njit(cache=True)
def _assign(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Label of each value: the number of interval bounds strictly below it (binary search)."""
    out = np.empty(x.size, np.int64)
    nb = bounds.size
    for i in range(x.size):
        v = x[i]
        lo, hi = 0, nb
        while lo < hi:
            mid = (lo + hi) >> 1
            if bounds[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo
    return out


def _reseed_empty(xs: np.ndarray, c: np.ndarray, counts: np.ndarray, new: np.ndarray,
                  hs: np.ndarray | None = None, mass: np.ndarray | None = None) -> np.ndarray:
    """Move the centroids of empty clusters onto the worst-served distinct values.

    Args:
        xs: the sorted values.
        c: the centroids of this iteration's assignment (increasing).
        counts: the size of each cluster (intervals of ``xs``, in order).
        new: the updated centroids (cluster means; an empty cluster's previous centroid).
        hs: the weights of ``xs`` (``None``: every value weighs 1).
        mass: the total weight of each cluster (with ``hs``); a cluster of zero weight
            counts as empty.

    Returns:
        ``new`` with each empty cluster's centroid set to one of the values that are
        worst served by their centroid (largest ``h_i (x_i − c_{l(i)})²``, distinct values,
        worst first); the donor cluster's (weighted) mean leaves that value out, and a
        donor keeps at least one value of positive weight.
    """
    labels = np.repeat(np.arange(c.size), counts)
    error = (xs.astype(np.float64) - c[labels]) ** 2
    if hs is None:
        empty = np.flatnonzero(counts == 0)
        sizes = counts.astype(np.float64).copy()
        members = counts.copy()
    else:
        error = hs * error
        empty = np.flatnonzero(~(mass > 0))
        sizes = mass.astype(np.float64).copy()
        members = np.bincount(labels, weights=(hs > 0).astype(np.float64), minlength=c.size)
    order = np.argsort(-error, kind="stable")
    new = new.copy()
    sums = new * sizes
    taken: set[float] = set()
    filled = 0
    for i in order:
        if filled == empty.size or error[i] <= 0.0:
            break
        v = float(xs[i])
        if v in taken:
            continue
        donor = labels[i]
        if members[donor] <= 1:
            continue
        weight = 1.0 if hs is None else float(hs[i])
        taken.add(v)
        members[donor] -= 1
        sizes[donor] -= weight
        sums[donor] -= weight * v
        if sizes[donor] > 0:
            new[donor] = sums[donor] / sizes[donor]
        new[empty[filled]] = v
        filled += 1
    return new


def _sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    """The weights as float64 ``[n]``, or ``None`` for unit weights; refuse bad ones."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, torch.Tensor):
        sample_weight = sample_weight.detach().cpu().to(torch.float64).numpy()
    try:
        h = np.asarray(sample_weight, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise RecipeError("k-means sample_weight must be an array of numbers") from None
    if h.size != n:
        raise RecipeError(f"k-means sample_weight has {h.size} entries for {n} values")
    if not np.all(np.isfinite(h)):
        raise RecipeError("k-means sample_weight must be finite")
    if np.any(h < 0):
        raise RecipeError("k-means sample_weight must be ≥ 0")
    return h if n and h.max() > 0 else None


def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str = "linear",
    max_iter: int = 3000,
    tol: float = 1e-9,
    seed: int = 0,
    sample_weight: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, exact and fast through sorting, optionally weighted.

    In one dimension each cluster is an interval between midpoints of neighbouring
    centroids.  After one sort, an iteration is ``k`` binary searches for the interval
    bounds and prefix sums for the cluster means: ``O(k log n)`` per iteration instead
    of ``O(n k)``, so running Lloyd to convergence is cheap.  The objective
    ``Σ_i min_j (w_i − c_j)²`` is the one of Deep Compression (Han et al., ICLR'16).

    With ``sample_weight`` ``h`` the objective is the weighted

        Σ_i h_i (w_i − c_{l(i)})²,     c_j = Σ_{l(i)=j} h_i w_i / Σ_{l(i)=j} h_i,

    Hessian-weighted k-means when ``h_i`` is the diagonal of the loss's Hessian (Choi,
    El-Khamy & Lee, ICLR'17, "Towards the Limit of Network Quantization", §4).  The
    prefix sums are then those of ``h`` and ``h · w`` along the sorted order.  Weights
    only move the centroids: each value is still labelled with its nearest centroid, so
    the interval structure (and the ``O(k log n)`` iteration) is unchanged.  Values of
    weight 0 are allowed; they do not pull on any centroid but get a label.  A cluster
    whose values all weigh 0 counts as empty.  Integer weights give what repeating each
    value ``h_i`` times gives (``linear`` and ``random`` starts included; see ``density``).

    Centroid initialisation (Han et al.'s §3.2, Figure 4):

    * ``linear``: evenly spaced over ``[min w, max w]`` (the paper's choice: keeps
      large weights, which matter most, represented; the range is that of all values,
      those of weight 0 included);
    * ``density``: evenly spaced over the CDF, ``c_j = F⁻¹((j + ½)/k)``: unweighted the
      quantiles of ``np.quantile`` (linear interpolation); weighted the inverse of the
      weighted CDF ``F(x) = Σ_{w_i ≤ x} h_i / Σ_i h_i`` (the smallest value whose
      ``F`` reaches the level, numpy's ``"inverted_cdf"`` of the repeated values);
    * ``random`` (Forgy): ``k`` values drawn at random (uniformly, whatever the weights).

    An empty cluster (the linear start on a tensor with outliers leaves many) is
    reseeded at the worst-served value, as scikit-learn relocates empty clusters: the
    distinct values with the largest ``h_i (w_i − c_{l(i)})²`` each become the centroid
    of one empty cluster (and leave their donor cluster's mean), and Lloyd continues.
    Every reseed strictly lowers the objective, so this ends; a cluster stays empty only
    when no value of positive weight is left off its centroid (fewer such distinct
    values than ``k``).  When no cluster empties, the iterations are exactly plain Lloyd's.

    Args:
        values: 1-D array of weights (any float dtype).
        k: number of clusters ``≥ 1``.
        init: ``"linear"``, ``"density"`` or ``"random"``.
        max_iter: iteration limit.
        tol: stop when no centroid moves by more than ``tol · (max − min)``.
        seed: random seed for ``init="random"``.
        sample_weight: ``None`` (every value weighs 1, exactly the unweighted algorithm)
            or a finite, non-negative weight per value (array or tensor of ``values``'
            size); all zero counts as unit weights.

    Returns:
        ``(centroids, labels)``: float32 centroids in increasing order (shape ``[k]``)
        and an int64 label per value in ``[0, k)``.

    Raises:
        RecipeError: an unknown ``init``, or weights of the wrong length, negative or
            not finite.
    """
    if init not in INITS:
        raise RecipeError(f"k-means init must be one of {', '.join(INITS)}, got {init!r}")
    x = np.asarray(values, dtype=np.float32).ravel()
    if k < 1:
        raise ValueError("k must be ≥ 1")
    h = _sample_weight(sample_weight, x.size)
    if x.size == 0:
        return np.zeros(k, np.float32), np.zeros(0, np.int64)
    if h is None:
        xs, hs = np.sort(x), None
    else:
        order = np.argsort(x, kind="stable")
        xs, hs = x[order], h[order]
    lo, hi = float(xs[0]), float(xs[-1])
    if init == "linear":
        c = np.linspace(lo, hi, k)
    elif init == "density":
        levels = (np.arange(k) + 0.5) / k
        if hs is None:
            c = np.quantile(xs, levels)
        else:
            cdf = np.cumsum(hs)
            c = xs[np.minimum(np.searchsorted(cdf, levels * cdf[-1], side="left"), xs.size - 1)]
    else:
        rng = np.random.default_rng(seed)
        c = np.sort(xs[rng.integers(0, xs.size, k)])
    c = c.astype(np.float64)
    if hs is None:
        prefix, mass_prefix = _prefix_sums(xs), None
    else:
        prefix, mass_prefix = _prefix_sums(hs * xs.astype(np.float64)), _prefix_sums(hs)
    span = max(hi - lo, 1e-30)
    for _ in range(max_iter):
        bounds = np.searchsorted(xs, ((c[:-1] + c[1:]) / 2.0).astype(np.float32))
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [xs.size]))
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        if mass_prefix is None:
            mass = counts
            new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        else:
            mass = mass_prefix[ends] - mass_prefix[starts]
            filled = mass > 0
            new = np.where(filled, sums / np.where(filled, mass, 1.0), c)
            # prefix differences of widely spread weights can round a light cluster's mean
            # off its interval: keep it inside (the exact mean always is)
            first, last = xs[np.minimum(starts, xs.size - 1)], xs[np.maximum(ends - 1, 0)]
            new = np.where(filled, np.clip(new, first, last), new)
        if not (mass > 0).all():
            new = _reseed_empty(xs, c, counts, new, hs, None if hs is None else mass)
        new = np.sort(new)
        moved = np.max(np.abs(new - c))
        c = new
        if moved <= tol * span:
            break
    centroids = c.astype(np.float32)
    labels = _assign(x, ((c[:-1] + c[1:]) / 2.0).astype(np.float32))
    return centroids, labels


def _nearest(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of an increasing ``codebook`` (ties to the lower one, as :func:`_assign`)."""
    bounds = (codebook[:-1] + codebook[1:]) / 2.0
    return torch.searchsorted(bounds, values.contiguous())


def compensated_indices(
    weight: torch.Tensor,
    codebook: np.ndarray | torch.Tensor,
    stats: Statistics,
    damp: float = 0.01,
    block: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round a weight onto a fixed codebook column by column, compensating each column's error (OBC / GPTQ).

    Frantar, Singh & Alistarh, NeurIPS'22 ("Optimal Brain Compression") and Frantar et
    al., ICLR'23 (GPTQ), with the grid replaced by the weight-sharing codebook.  A
    layer computes ``W X`` (rows of ``W`` = outputs; a convolution's weight flattened to
    ``[C_out, C_in·kh·kw]``, the column order of ``F.unfold`` and of ``H = X Xᵀ``).
    With ``U`` the upper Cholesky factor of ``(H + λI)⁻¹``
    (:func:`~efficientdl.compress.pruning.obs.dampened_inverse_factor`,
    ``λ = damp · mean(diag H)``), the columns ``j = 0, 1, …`` are visited in order:

        q_j = nearest codebook value of w_j,     e_j = (w_j − q_j) / U_jj,
        w_{:, >j} ← w_{:, >j} − e_j · U_{j, >j},     w_j ← q_j,

    the Optimal Brain Surgeon update of the columns not yet rounded, which keeps
    ``‖(W − Ŵ) X‖²`` least with the columns ``≤ j`` fixed (its increase is
    ``(w_j − q_j)² / U_jj²``).  As in GPTQ the updates are applied lazily in blocks of
    ``block`` columns (the same result).  A grouped convolution (``stats.groups = g``)
    is compensated per group, output rows ``i`` of group ``i // (C_out/g)`` with that
    group's ``H``.  Pruned weights (exact zeros) keep index 0 and receive no update (the
    update is masked), so the sparsity pattern is kept exactly; an input that never
    fired (``H_jj = 0``) neither sends nor receives an update.

    Args:
        weight: the weight, ``[rows, …]`` (zeros = pruned).
        codebook: the shared values in increasing order (without the zero), ``[K]``.
        stats: the statistics of the layer's inputs, with the Gram matrix.
        damp: the dampening ``λ / mean(diag H)``, ``≥ 0``.
        block: columns per lazy block.

    Returns:
        ``(indices, new_weight)``: int64 indices of the weight's shape (0 = pruned,
        ``k + 1`` = ``codebook[k]``) and the compensated, rounded weight ``Ŵ = C[I]``
        (float64, the weight's shape).

    Raises:
        RecipeError: statistics without the Gram matrix, of the wrong size for the weight.
        torch.linalg.LinAlgError: ``H + λI`` is not positive definite.
    """
    shape, rows = weight.shape, weight.shape[0]
    W = weight.detach().reshape(rows, -1).to(torch.float64).clone()
    d = W.shape[1]
    groups = stats.groups
    if stats.gram is None:
        raise RecipeError("compensation needs the statistics' Gram matrix (collect_statistics(gram=True))")
    if rows % groups or tuple(stats.group_gram(0).shape) != (d, d):
        raise RecipeError(f"statistics for {groups} group(s) of {stats.group_gram(0).shape[-1]} inputs do not fit "
                          f"a weight of {rows} rows of {d}")
    code = torch.as_tensor(np.asarray(codebook, np.float64) if not isinstance(codebook, torch.Tensor)
                           else codebook.detach().cpu().to(torch.float64)).to(W.device)
    alive = W != 0
    indices = torch.zeros(rows, d, dtype=torch.int64, device=W.device)
    per = rows // groups
    for g in range(groups):
        U, _ = dampened_inverse_factor(stats.group_gram(g).to(W.device), damp)
        r0, r1 = g * per, (g + 1) * per
        Wg, Ag = W[r0:r1], alive[r0:r1]
        for b0 in range(0, d, block):
            b1 = min(b0 + block, d)
            W1, A1, U1 = Wg[:, b0:b1].clone(), Ag[:, b0:b1], U[b0:b1, b0:b1]
            E1 = torch.zeros_like(W1)
            for i in range(b1 - b0):
                w, a = W1[:, i], A1[:, i]
                nearest = _nearest(w, code)
                q = torch.where(a, code[nearest], torch.zeros_like(w))
                e = (w - q) / U1[i, i]
                W1[:, i + 1:] -= (e.unsqueeze(1) * U1[i, i + 1:].unsqueeze(0)) * A1[:, i + 1:]
                W1[:, i] = q
                E1[:, i] = e
                indices[r0:r1, b0 + i] = torch.where(a, nearest + 1, torch.zeros_like(nearest))
            Wg[:, b0:b1] = W1
            if b1 < d:
                Wg[:, b1:] -= (E1 @ U[b0:b1, b1:]) * Ag[:, b1:]
        W[r0:r1] = Wg
    return indices.reshape(shape), W.reshape(shape)


def share_layer(module: nn.Module, bits: int, init: str = "linear", seed: int = 0,
                attr: str = "weight", importance: torch.Tensor | None = None,
                compensate_with: Statistics | None = None, damp: float = 0.01) -> SharedWeight:
    """Cluster one layer's nonzero weights into ``2^bits − 1`` shared values in place.

    Existing parametrizations (a pruning mask) are folded in: zeros stay zeros (index 0).
    The stored weight is frozen; only the centroids train afterwards.

    With ``importance`` ``h`` the codebook is that of weighted k-means,
    ``min Σ_i h_i (w_i − c_{l(i)})²`` over the nonzero weights (Choi, El-Khamy & Lee,
    ICLR'17: ``h`` = the Hessian's diagonal; :func:`share` passes ``H_jj`` of the
    layer's inputs).  With ``compensate_with`` the codebook stays as k-means found it,
    but the indices are those of :func:`compensated_indices` (GPTQ-style rounding with
    error compensation, Frantar et al. NeurIPS'22) instead of each weight's nearest
    centroid.  Either way the result is the same :class:`SharedWeight` as plain sharing.
    Nothing on the module changes before the codebook and indices are computed.

    Args:
        module: the module that registers the tensor.
        bits: bits per index, 1 to 16.
        init: centroid initialisation of :func:`kmeans_1d`.
        seed: random seed for ``init="random"``.
        attr: the tensor's name on the module (default ``"weight"``).
        importance: a finite, non-negative weight per element, the tensor's shape
            (``None``: plain k-means).
        compensate_with: the statistics of the layer's inputs, with the Gram matrix
            (``None``: no compensation).
        damp: the dampening of the compensation, ``λ = damp · mean(diag H)``.

    Returns:
        The registered :class:`SharedWeight`.

    Raises:
        RecipeError: an importance of the wrong shape or with bad values, statistics
            that do not fit the weight.
    """
    w = getattr(module, attr).detach().clone()
    flat = w.flatten().cpu().numpy()
    nonzero = np.flatnonzero(flat)
    h = None
    if importance is not None:
        if tuple(importance.shape) != tuple(w.shape):
            raise RecipeError(f"share: importance of shape {tuple(importance.shape)} for a weight of "
                              f"shape {tuple(w.shape)}")
        h = importance.detach().flatten().cpu().to(torch.float64).numpy()[nonzero]
    k = (1 << bits) - 1
    k_used = max(1, min(k, nonzero.size))
    centroids, labels = kmeans_1d(flat[nonzero], k_used, init=init, seed=seed, sample_weight=h)
    if compensate_with is not None:
        indices_t, _ = compensated_indices(w, centroids, compensate_with, damp=damp)
        indices = indices_t.flatten().cpu().numpy()
    else:
        indices = np.zeros(flat.size, np.int64)
        indices[nonzero] = labels + 1
    if k_used < k:  # fewer distinct weights than clusters: pad with unused centroids
        centroids = np.concatenate([centroids, np.full(k - k_used, centroids[-1], np.float32)])
    fold_parametrization(module, attr)   # a mask or a quantizer: the values leave its grid
    return apply_shared_weight(module, attr, torch.from_numpy(centroids), torch.from_numpy(indices), bits)


def hessian_importance(weight: torch.Tensor, stats: Statistics) -> torch.Tensor:
    """The diagonal Hessian weight of each element: ``h_ij = H_jj = ‖X_j‖²`` (Choi et al., ICLR'17).

    ``‖W X − Ŵ X‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` has the Hessian ``2 H`` in each row, so
    the diagonal approximation of the output error is ``Σ_ij H_jj (W_ij − Ŵ_ij)²``.

    Args:
        weight: ``[rows, …]`` (a convolution's flattened to rows of ``C_in/g·kh·kw``).
        stats: the statistics of the layer's inputs (group-aware; the Gram matrix is
            not needed).

    Returns:
        float64 ``h`` of the weight's shape, on the statistics' device.

    Raises:
        RecipeError: statistics that do not fit the weight.
    """
    rows = weight.shape[0]
    d = weight.numel() // max(rows, 1)
    width = stats.sq_norms.shape[-1]
    if rows % stats.groups or width != d or stats.sq_norms.numel() != stats.groups * width:
        raise RecipeError(f"statistics for {stats.groups} group(s) of {width} inputs do not fit "
                          f"a weight of {rows} rows of {d}")
    return (stats.row_norms(rows) ** 2).reshape(weight.shape)


def share(
    model: nn.Module,
    bits: Any,
    init: str = "linear",
    seed: int = 0,
    finetune: Callable[[nn.Module], list[dict]] | None = None,
    weighting: str = "none",
    statistics: Mapping[str, Statistics] | None = None,
    compensate: bool = False,
    damp: float = 0.01,
) -> tuple[nn.Module, StageReport]:
    """Weight sharing with trained centroids: the second stage of Deep Compression.

    Plain (``weighting="none"``, ``compensate=False``): per layer, k-means on the nonzero
    weights, each weight stored as the index of its nearest centroid (Han et al., ICLR'16).

    Post-training refinements from calibration statistics (``statistics[key]`` of
    :func:`~efficientdl.compress.calibration.collect_statistics`, the inputs ``X`` each
    row of ``W`` multiplies, ``H = X Xᵀ``):

    * ``weighting="hessian"``: Hessian-weighted k-means (Choi, El-Khamy & Lee, ICLR'17),
      ``min Σ_ij H_jj (W_ij − c_{l(ij)})²``: weights that multiply strong inputs are
      represented more precisely (:func:`hessian_importance`, per group for a grouped
      convolution);
    * ``compensate=True``: the codebook fixed, the columns are rounded left to right and
      each one's error is compensated on the columns to its right
      (:func:`compensated_indices`; Optimal Brain Compression / GPTQ, Frantar et al.);
      needs the Gram matrix.  Pruned weights stay exactly zero.

    A tensor without statistics (recurrent gate matrices, embeddings, attention
    projections: :func:`~efficientdl.compress.calibration.collect_statistics` does not
    cover them) is shared plainly and listed in ``report.settings["unweighted"]``.

    Args:
        model: model to quantize in place (pruned or not).
        bits: bits per weight index, a scalar or a mapping by layer name / module type
            (the paper: 8 for conv, 5 for fc); layers not covered stay as they are.
        init: centroid initialisation (``linear``, ``density``, ``random``).
        seed: seed for random initialisation.
        finetune: called as ``finetune(model)`` after clustering to train the
            centroids (assignments fixed); returns per-epoch records.
        weighting: ``"none"`` or ``"hessian"``.
        statistics: ``{tensor key: Statistics}``; needed by ``weighting="hessian"`` and
            ``compensate``; with it (and its Gram matrices) the report gives each
            tensor's reconstruction error.
        compensate: round with error compensation.
        damp: the compensation's dampening ``λ / mean(diag H)``, ``≥ 0``.

    Returns:
        ``(model, report)`` with ``report.settings``: ``bits`` per layer, ``init``,
        ``weighting``, ``compensate``; when ``statistics`` is given also
        ``reconstruction_error`` per tensor with a Gram matrix
        (``‖(W − Ŵ)X‖_F / ‖W X‖_F`` on the calibration inputs, before fine-tuning,
        :func:`~efficientdl.compress.pruning.post_training.reconstruction_error`) and
        ``unweighted`` (the shared tensors that had no statistics).

    Raises:
        RecipeError: bad bits, an unknown weighting, ``hessian``/``compensate`` without
            statistics, compensation with statistics lacking the Gram matrix, statistics
            that do not fit their tensor, or a Gram matrix that cannot be factorised.

    Example:
        >>> model, report = share(model, bits={"Conv2d": 8, "Linear": 5})
        >>> stats = collect_statistics(model, loader, max_batches=8)
        >>> model, report = share(model, bits=4, weighting="hessian", statistics=stats, compensate=True)
    """
    start = time.perf_counter()
    if weighting not in WEIGHTINGS:
        raise RecipeError(f"share: weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if not isinstance(compensate, bool):
        raise RecipeError(f"share: compensate must be true or false, got {compensate!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise RecipeError(f"share: damp must be a number ≥ 0, got {damp!r}")
    needs = weighting != "none" or compensate
    if needs and statistics is None:
        raise RecipeError(f"share: weighting={weighting!r}, compensate={compensate} needs calibration statistics")
    check_spec_keys(bits, model, "bits")
    plan = []
    for t in list(compressible_tensors(model)):
        b = tensor_setting(bits, t, "bits")
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise RecipeError(f"bits for '{t.key}' must be an integer in 1..16, got {b!r}")
        stats = statistics.get(t.key) if statistics is not None else None
        if stats is not None:
            try:
                hessian_importance(t.value, stats)
            except RecipeError as error:
                raise RecipeError(f"share: '{t.key}': {error}") from None
            if compensate and stats.gram is None:
                raise RecipeError(f"share: compensating '{t.key}' needs the Gram matrix "
                                  "(statistics collected with gram=False)")
        plan.append((t, b, stats))
    chosen: dict[str, int] = {}
    errors: dict[str, float] = {}
    unweighted: list[str] = []
    ties = tied_pairs(model)
    for t, b, stats in plan:
        if stats is None and statistics is not None:
            unweighted.append(t.key)
        w0 = t.value.detach().clone() if stats is not None and stats.gram is not None else None
        importance = hessian_importance(t.value, stats) if stats is not None and weighting == "hessian" else None
        try:
            share_layer(t.module, b, init=init, seed=seed, attr=t.attr, importance=importance,
                        compensate_with=stats if compensate else None, damp=damp)
        except torch.linalg.LinAlgError:
            raise RecipeError(f"share: the Gram matrix of '{t.key}' is not positive definite "
                              f"with damp={damp}; raise damp") from None
        chosen[t.key] = b
        if w0 is not None:
            errors[t.key] = reconstruction_error(w0, t.value, stats)
    retie(ties)
    settings: dict[str, Any] = {"bits": chosen, "init": init, "weighting": weighting, "compensate": compensate}
    if statistics is not None:
        settings["reconstruction_error"] = errors
        settings["unweighted"] = unweighted
    history = list(finetune(model) or []) if finetune is not None else []
    report = StageReport(stage="quantize", history=history, seconds=time.perf_counter() - start,
                         settings=settings)
    return model, report
