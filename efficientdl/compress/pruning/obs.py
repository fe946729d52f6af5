"""Pruning with reconstruction: Optimal Brain Surgeon in SparseGPT's column-by-column form.

A layer computes ``Y = W X`` (rows of ``W`` = outputs, ``X`` the calibration inputs,
``H = X Xᵀ``).  Removing weights should keep ``‖W X − Ŵ X‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)``
small.  Optimal Brain Surgeon (Hassibi & Stork 1993) removes one weight ``w_j`` of a
row and moves the others by the optimal update

    δ = −(w_j / [H⁻¹]_jj) · H⁻¹_{:,j},      error increase  w_j² / [H⁻¹]_jj.

SparseGPT (Frantar & Alistarh, ICML'23) makes this affordable for whole layers: the
columns are visited left to right, and a removed column is compensated only by the
columns to its right.  With the upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``),
row ``j`` of ``U`` is exactly the OBS update direction after columns ``< j`` are fixed,
so removing ``w_j`` is

    w ← w − (w_j / U_jj) · U_{j,:},        error increase  w_j² / U_jj²,

and every row shares the one factorisation.  The mask is chosen adaptively in blocks of
columns by the saliency ``w² / U_jj²`` on the weights as updated so far; an ``N:M``
pattern chooses the ``M − N`` of least saliency in each group of ``M`` columns when the
group is reached.  ``U_00² = [H⁻¹]_00``: for the first column the update is OBS's.
"""

from __future__ import annotations

from typing import Any

import torch

from .criteria import parse_pattern


def dampened_inverse_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of the dampened inverse Hessian (SparseGPT, Frantar & Alistarh ICML'23; GPTQ).

    ``H ← H + λI`` with ``λ = damp · mean(diag H)`` after an input that never fired
    (``H_jj = 0``) gets ``H_jj = 1``; then ``U`` upper triangular with ``(H + λI)⁻¹ = Uᵀ U``.
    Row ``j`` of ``U`` is the optimal update direction of the columns ``≥ j`` once the
    columns ``< j`` are fixed, so a change ``e_j`` of column ``j`` is compensated by
    ``w ← w − (e_j / U_jj) · U_{j,:}``.

    Args:
        H: the input Gram matrix ``[d, d]`` (any float dtype; computed in float64).
        damp: the dampening ``λ / mean(diag H)``.

    Returns:
        ``(U, dead)``: ``U`` ``[d, d]`` float64, and the boolean mask ``[d]`` of dead inputs.

    Raises:
        torch.linalg.LinAlgError: ``H + λI`` is not positive definite (``damp = 0`` on a
            singular ``H``).
    """
    H = H.to(torch.float64).clone()
    d = H.shape[0]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0                                  # SparseGPT: a dead input is an identity column
    lam = damp * float(torch.diagonal(H).mean())
    H += lam * torch.eye(d, dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)
    return U, dead


_dampened_inverse_factor = dampened_inverse_factor   # the former private name


def obs_prune(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    pattern: Any = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a weight matrix and update the survivors to reconstruct its output (SparseGPT).

    Hassibi & Stork 1993 (Optimal Brain Surgeon), in the column-by-column form of
    Frantar & Alistarh, ICML'23 (SparseGPT, Algorithm 1):

    1. dampen ``H ← H + λI``, ``λ = damp · mean(diag H)``; an input that never fired
       (``H_jj = 0``) gets ``H_jj = 1`` and its weights are zeroed (they never
       contributed to the output);
    2. ``U`` = the upper Cholesky factor of ``H⁻¹`` (``H⁻¹`` itself through the Cholesky
       factor of ``H``);
    3. for each block of ``block`` columns: choose which weights of the block to remove
       by the saliency ``w² / U_jj²`` on the weights as updated so far (unstructured: the
       lowest of the block, the count keeping the layer's total exact; ``N:M``: the
       ``M − N`` lowest of each group of ``M`` columns, chosen when the group is
       reached); then column by column ``e = w_j / U_jj`` for the removed entries,
       ``w_{j:} ← w_{j:} − e · U_{j, j:}``; the block's error is propagated to the
       columns on its right in one product, ``W_{:, >b} −= E · U_{b, >b}``.

    Removing one weight ``w_j`` raises ``tr((W − Ŵ) H (W − Ŵ)ᵀ)`` by ``w_j² / U_jj²``, the
    least possible with the columns left of ``j`` fixed; for ``j = 0`` that is OBS's
    ``w_j² / [H⁻¹]_jj``.  Computed in float64.

    Args:
        weight: ``[rows, d]``, or a convolution's ``[C_out, C_in, kh, kw]`` (flattened to
            rows of ``C_in·kh·kw``, the column order of ``F.unfold`` and so of ``H``).
        H: the input Gram matrix ``[d, d]`` (:class:`~efficientdl.compress.calibration.Statistics`).
        sparsity: the fraction of weights to remove, in ``[0, 1]``.
        pattern: ``(n, m)`` or ``"n:m"``: keep ``n`` of every ``m`` consecutive weights of
            a row instead (the row length must be a multiple of ``m``).
        block: columns per block (rounded down to a multiple of ``m``, at least ``m``).
        damp: the dampening ``λ / mean(diag H)``.

    Returns:
        ``(new_weight, mask)``: the updated weight (the weight's shape and dtype, zero
        where pruned) and the boolean mask of kept weights.

    Raises:
        ValueError: neither or both of ``sparsity`` and ``pattern``, a sparsity out of
            range, or a row length that does not split into groups of ``m``.

    Example:
        >>> new_w, mask = obs_prune(layer.weight, stats["fc1"].gram, sparsity=0.5)
    """
    if (sparsity is None) == (pattern is None):
        raise ValueError("obs_prune needs exactly one of sparsity and pattern")
    shape, dtype = weight.shape, weight.dtype
    W = weight.detach().reshape(shape[0], -1).to(torch.float64).clone()
    rows, d = W.shape
    if tuple(H.shape) != (d, d):
        raise ValueError(f"H is {tuple(H.shape)}, expected ({d}, {d}) for rows of {d} weights")
    nm = parse_pattern(pattern) if isinstance(pattern, str) else (tuple(pattern) if pattern is not None else None)
    if nm is not None:
        n, m = nm
        if d % m:
            raise ValueError(f"a row of {d} weights does not split into groups of {m}")
        block = max(m, block // m * m)
    elif not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    U, dead = _dampened_inverse_factor(H.to(W.device), damp)
    W[:, dead] = 0.0
    pruned = torch.zeros(rows, d, dtype=torch.bool, device=W.device)
    removed_so_far = 0
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        W1 = W[:, b0:b1].clone()
        U1 = U[b0:b1, b0:b1]
        diag = torch.diagonal(U1)
        M1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            target = int(round(float(sparsity) * rows * b1)) - removed_so_far
            saliency = (W1 ** 2 / diag.reshape(1, -1) ** 2).flatten()
            order = torch.sort(saliency, stable=True).indices
            M1.view(-1)[order[:target]] = True
            removed_so_far += target
        E1 = torch.zeros_like(W1)
        for i in range(b1 - b0):
            if nm is not None and i % m == 0:
                group = W1[:, i:i + m] ** 2 / diag[i:i + m].reshape(1, -1) ** 2
                lowest = torch.sort(group, dim=1, stable=True).indices[:, :m - n]
                M1[:, i:i + m].scatter_(1, lowest, True)
            w = W1[:, i]
            e = torch.where(M1[:, i], w, torch.zeros_like(w)) / U1[i, i]
            W1[:, i:] -= e.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = torch.where(M1[:, i], torch.zeros_like(w), W1[:, i])
            E1[:, i] = e
        W[:, b0:b1] = W1
        pruned[:, b0:b1] = M1
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    mask = ~pruned
    W[pruned] = 0.0
    return W.to(dtype).reshape(shape), mask.reshape(shape)


def obs_saliency(weight: torch.Tensor, H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Optimal Brain Surgeon's saliency ``w_ij² / [H⁻¹]_jj`` (Hassibi & Stork 1993), no update.

    The increase of ``‖W X − Ŵ X‖²`` when weight ``(i, j)`` alone is removed and its row
    is re-optimised, with the dampened ``H + λI`` (``λ = damp · mean(diag H)``; a dead
    input gets ``H_jj = 1``, as in :func:`obs_prune`).

    Args:
        weight: ``[rows, d]`` or a convolution's weight (flattened to rows of ``d``).
        H: the input Gram matrix ``[d, d]``.
        damp: the dampening.

    Returns:
        The saliency, of the weight's shape (float64).
    """
    U, _ = _dampened_inverse_factor(H.to(weight.device), damp)
    hinv_diag = (U * U).sum(dim=0)                        # diag(Uᵀ U) = diag(H⁻¹)
    W = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    return (W ** 2 / hinv_diag.reshape(1, -1)).reshape(weight.shape)
