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
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numba
import numpy as np
import torch
from torch import nn

from ...core.state import SharedWeight, apply_shared_weight, shared_weight  # noqa: F401  (re-exported)
from ...errors import RecipeError
from ...report.results import StageReport
from ..layers import check_spec_keys, compressible_tensors, fold_parametrization, retie, tensor_setting, tied_pairs

INITS = ("linear", "density", "random")


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


def _reseed_empty(xs: np.ndarray, c: np.ndarray, counts: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Move the centroids of empty clusters onto the worst-served distinct values.

    Args:
        xs: the sorted values.
        c: the centroids of this iteration's assignment (increasing).
        counts: the size of each cluster (intervals of ``xs``, in order).
        new: the updated centroids (cluster means; an empty cluster's previous centroid).

    Returns:
        ``new`` with each empty cluster's centroid set to one of the values farthest from
        the centroid that serves them (distinct values, farthest first); the donor
        cluster's mean leaves that value out.
    """
    labels = np.repeat(np.arange(c.size), counts)
    error = (xs.astype(np.float64) - c[labels]) ** 2
    empty = np.flatnonzero(counts == 0)
    order = np.argsort(-error, kind="stable")
    new = new.copy()
    sizes = counts.astype(np.float64).copy()
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
        if sizes[donor] <= 1:
            continue
        taken.add(v)
        sizes[donor] -= 1
        sums[donor] -= v
        new[donor] = sums[donor] / sizes[donor]
        new[empty[filled]] = v
        filled += 1
    return new


def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str = "linear",
    max_iter: int = 3000,
    tol: float = 1e-9,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, exact and fast through sorting.

    In one dimension each cluster is an interval between midpoints of neighbouring
    centroids.  After one sort, an iteration is ``k`` binary searches for the interval
    bounds and prefix sums for the cluster means: ``O(k log n)`` per iteration instead
    of ``O(n k)``, so running Lloyd to convergence is cheap.  The objective ``Σ_i min_j (w_i − c_j)²`` is the one of the paper.

    Centroid initialisation (the paper's §3.2, Figure 4):

    * ``linear``: evenly spaced over ``[min w, max w]`` (the paper's choice: keeps
      large weights, which matter most, represented);
    * ``density``: evenly spaced over the CDF (quantiles);
    * ``random`` (Forgy): ``k`` weights drawn at random.

    An empty cluster (the linear start on a tensor with outliers leaves many) is
    reseeded at the worst-served value, as scikit-learn relocates empty clusters: the
    distinct values farthest from their current centroid each become the centroid of
    one empty cluster (and leave their donor cluster's mean), and Lloyd continues.
    Every reseed strictly lowers the objective, so this ends; a cluster stays empty only
    when no value is left off its centroid (fewer distinct values than ``k``).  When no
    cluster empties, the iterations are exactly plain Lloyd's.

    Args:
        values: 1-D array of weights (any float dtype).
        k: number of clusters ``≥ 1``.
        init: ``"linear"``, ``"density"`` or ``"random"``.
        max_iter: iteration limit.
        tol: stop when no centroid moves by more than ``tol · (max − min)``.
        seed: random seed for ``init="random"``.

    Returns:
        ``(centroids, labels)``: float32 centroids in increasing order (shape ``[k]``)
        and an int64 label per value in ``[0, k)``.
    """
    if init not in INITS:
        raise RecipeError(f"k-means init must be one of {', '.join(INITS)}, got {init!r}")
    x = np.asarray(values, dtype=np.float32).ravel()
    if k < 1:
        raise ValueError("k must be ≥ 1")
    if x.size == 0:
        return np.zeros(k, np.float32), np.zeros(0, np.int64)
    xs = np.sort(x)
    lo, hi = float(xs[0]), float(xs[-1])
    if init == "linear":
        c = np.linspace(lo, hi, k)
    elif init == "density":
        c = np.quantile(xs, (np.arange(k) + 0.5) / k)
    else:
        rng = np.random.default_rng(seed)
        c = np.sort(xs[rng.integers(0, xs.size, k)])
    c = c.astype(np.float64)
    prefix = _prefix_sums(xs)
    span = max(hi - lo, 1e-30)
    for _ in range(max_iter):
        bounds = np.searchsorted(xs, ((c[:-1] + c[1:]) / 2.0).astype(np.float32))
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [xs.size]))
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if not counts.all():
            new = _reseed_empty(xs, c, counts, new)
        new = np.sort(new)
        moved = np.max(np.abs(new - c))
        c = new
        if moved <= tol * span:
            break
    centroids = c.astype(np.float32)
    labels = _assign(x, ((c[:-1] + c[1:]) / 2.0).astype(np.float32))
    return centroids, labels


def share_layer(module: nn.Module, bits: int, init: str = "linear", seed: int = 0,
                attr: str = "weight") -> SharedWeight:
    """Cluster one layer's nonzero weights into ``2^bits − 1`` shared values in place.

    Existing parametrizations (a pruning mask) are folded in: zeros stay zeros (index 0).
    The stored weight is frozen; only the centroids train afterwards.

    Args:
        module: the module that registers the tensor.
        bits: bits per index, 1 to 16.
        init: centroid initialisation of :func:`kmeans_1d`.
        seed: random seed for ``init="random"``.
        attr: the tensor's name on the module (default ``"weight"``).

    Returns:
        The registered :class:`SharedWeight`.
    """
    w = getattr(module, attr).detach().clone()
    fold_parametrization(module, attr)   # a mask or a quantizer: the values leave its grid
    flat = w.flatten().numpy()
    nonzero = np.flatnonzero(flat)
    k = (1 << bits) - 1
    k_used = max(1, min(k, nonzero.size))
    centroids, labels = kmeans_1d(flat[nonzero], k_used, init=init, seed=seed)
    if k_used < k:  # fewer distinct weights than clusters: pad with unused centroids
        centroids = np.concatenate([centroids, np.full(k - k_used, centroids[-1], np.float32)])
    indices = np.zeros(flat.size, np.int64)
    indices[nonzero] = labels + 1
    return apply_shared_weight(module, attr, torch.from_numpy(centroids), torch.from_numpy(indices), bits)


def share(
    model: nn.Module,
    bits: Any,
    init: str = "linear",
    seed: int = 0,
    finetune: Callable[[nn.Module], list[dict]] | None = None,
) -> tuple[nn.Module, StageReport]:
    """Weight sharing with trained centroids: the second stage of Deep Compression.

    Args:
        model: model to quantize in place (pruned or not).
        bits: bits per weight index, a scalar or a mapping by layer name / module type
            (the paper: 8 for conv, 5 for fc); layers not covered stay as they are.
        init: centroid initialisation (``linear``, ``density``, ``random``).
        seed: seed for random initialisation.
        finetune: called as ``finetune(model)`` after clustering to train the
            centroids (assignments fixed); returns per-epoch records.

    Returns:
        ``(model, report)`` with ``report.settings["bits"]`` per layer.

    Example:
        >>> model, report = share(model, bits={"Conv2d": 8, "Linear": 5})
    """
    start = time.perf_counter()
    check_spec_keys(bits, model, "bits")
    chosen = {}
    ties = tied_pairs(model)
    for t in list(compressible_tensors(model)):
        b = tensor_setting(bits, t, "bits")
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise RecipeError(f"bits for '{t.key}' must be an integer in 1..16, got {b!r}")
        share_layer(t.module, b, init=init, seed=seed, attr=t.attr)
        chosen[t.key] = b
    retie(ties)
    history = list(finetune(model) or []) if finetune is not None else []
    report = StageReport(stage="quantize", history=history, seconds=time.perf_counter() - start,
                         settings={"bits": chosen, "init": init})
    return model, report
