"""Low-rank approximation of fully connected layers by truncated SVD.

A weight ``W (out × in)`` with singular value decomposition ``W = U Σ Vᵀ`` is replaced
by its best rank-``r`` approximation (Eckart–Young)

    W ≈ W_r = (U_r Σ_r^{1/2}) (Σ_r^{1/2} V_rᵀ),

i.e. two layers ``in → r`` (no bias) and ``r → out`` (the original bias), with
``r (in + out)`` weights instead of ``in · out`` and as many multiply-accumulates.  The
approximation error is exactly the discarded spectrum:
``‖W − W_r‖_F² = Σ_{i>r} σ_i²`` and ``‖W − W_r‖_2 = σ_{r+1}``.

The rank is chosen per layer by a target rank, by the share of energy ``Σ_{i≤r} σ_i² /
Σ σ_i²`` to keep, or by a parameter budget (a factor fewer parameters).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...errors import RecipeError
from ..transforms import record_transform, register_transform
from ..layers import layer_setting, replace_module


def choose_rank(singular_values: torch.Tensor, in_features: int, out_features: int, rank: int | None = None,
                energy: float | None = None, reduction: float | None = None) -> int:
    """The rank for one layer from exactly one criterion.

    Args:
        singular_values: descending ``σ``.
        in_features, out_features: layer size.
        rank: a fixed rank (capped at ``min(in, out)``).
        energy: smallest ``r`` with ``Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²`` (0 < energy ≤ 1).
        reduction: largest ``r`` with ``r (in + out) ≤ in · out / reduction`` (≥ 1).

    Returns:
        The rank, at least 1.
    """
    full = min(in_features, out_features)
    given = [x is not None for x in (rank, energy, reduction)]
    if sum(given) != 1:
        raise RecipeError("low rank: give exactly one of rank, energy or reduction")
    if rank is not None:
        if rank < 1:
            raise RecipeError(f"low rank: rank must be ≥ 1, got {rank}")
        return min(int(rank), full)
    if energy is not None:
        if not 0 < energy <= 1:
            raise RecipeError(f"low rank: energy must be in (0, 1], got {energy}")
        e = singular_values.double() ** 2
        cum = torch.cumsum(e, 0) / e.sum()
        return min(full, int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12)) + 1)
    if reduction < 1:
        raise RecipeError(f"low rank: reduction must be ≥ 1, got {reduction}")
    return max(1, min(full, math.floor(in_features * out_features / reduction / (in_features + out_features))))


def svd_linear(layer: nn.Linear, rank: int | None = None, energy: float | None = None,
               reduction: float | None = None) -> tuple[nn.Sequential, dict]:
    """Replace ``layer`` by its rank-``r`` factorisation ``Linear(in, r) → Linear(r, out)``.

    Returns:
        ``(module, info)`` with ``info``: ``rank``, ``params_before``, ``params_after``,
        ``frobenius_error`` and ``discarded_energy`` (``Σ_{i>r} σ_i² / Σ σ_i²``).
    """
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = choose_rank(s, layer.in_features, layer.out_features, rank, energy, reduction)
    root = s[:r].sqrt()
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:r]).to(layer.weight.dtype))
        second.weight.copy_((u[:, :r] * root[None, :]).to(layer.weight.dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    discarded = float((s[r:] ** 2).sum())
    info = {"rank": r, "params_before": layer.weight.numel(), "params_after": r * (layer.in_features + layer.out_features),
            "frobenius_error": math.sqrt(discarded), "discarded_energy": discarded / float((s ** 2).sum())}
    return nn.Sequential(first, second), info


def low_rank(model: nn.Module, rank: Any = None, energy: Any = None, reduction: Any = None,
             layers: list[str] | None = None) -> tuple[nn.Module, dict[str, dict]]:
    """Factor the fully connected layers of ``model`` (in place) by truncated SVD.

    Args:
        model: any ``nn.Module``.
        rank, energy, reduction: one criterion, as one number or a per-layer mapping
            (layer names, ``"Linear"`` or ``"default"``; a layer whose setting is None is kept).
        layers: only these layer names (default: every ``nn.Linear``).

    Returns:
        ``(model, {layer name: info})`` (see :func:`svd_linear`).  The chosen ranks are
        recorded in ``model.edl_arch["transforms"]`` so that a saved file rebuilds the
        factorised structure (:func:`efficientdl.models.rebuild`).
    """
    report = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or not name or (layers is not None and name not in layers):
            continue
        settings = {k: layer_setting(v, name, module, k) if v is not None else None
                    for k, v in (("rank", rank), ("energy", energy), ("reduction", reduction))}
        if all(v is None for v in settings.values()):
            continue
        new, info = svd_linear(module, **settings)
        replace_module(model, name, new)
        report[name] = info
    if report:
        record_transform(model, "svd", ranks={name: info["rank"] for name, info in report.items()})
    return model, report


@register_transform("svd")
def _replay_svd(model: nn.Module, ranks: dict[str, int]) -> None:
    """Rebuild the factorised layers of :func:`low_rank` (their weights come from the file)."""
    modules = dict(model.named_modules())
    for name in ranks:
        if type(modules.get(name)) is not nn.Linear:
            raise ValueError(f"'{name}' is not an nn.Linear layer of the model")
    low_rank(model, rank={name: int(r) for name, r in ranks.items()}, layers=list(ranks))
