"""Fully connected layers to tensor-train layers by TT-SVD (Novikov et al., "Tensorizing
Neural Networks", NIPS 2015; Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 2011).

The weight of ``nn.Linear(∏ m_k, ∏ n_k)`` is read as the ``2d``-way tensor
``A[(i_1, j_1), (i_2, j_2), …, (i_d, j_d)]`` (mode ``k`` of size ``m_k n_k``) and decomposed
by TT-SVD (Oseledets, Algorithm 1): with ``C = A`` and ``r_0 = 1``, for ``k = 1 … d − 1``
the unfolding ``C`` of shape ``(r_{k−1} m_k n_k) × (rest)`` is factorised by truncated SVD
``C ≈ U_k Σ_k V_kᵀ`` with ``r_k`` singular values kept; ``U_k`` becomes core ``G_k`` and
``C ← Σ_k V_kᵀ`` carries on; the last ``C`` is ``G_d``.  With ``δ_k`` the Frobenius norm of
the singular values dropped at step ``k``, Oseledets' Theorem 2.2 bounds the error:

    ‖A − TT‖_F ≤ √(Σ_k δ_k²)

(equality here: the cores ``U_k`` have orthonormal columns, so the step errors are
orthogonal).  A relative accuracy ``ε`` is met by dropping, at every step, the largest
tail with ``δ_k ≤ ε ‖A‖_F / √(d − 1)``.  The layer then computes from the cores, see
:class:`efficientdl.nn.TTLinear`.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ...errors import EdlError, RecipeError
from ..transforms import record_transform, register_transform
from ...nn.tensor_train import TTLinear, tt_ranks
from ..layers import check_spec_keys, layer_setting, replace_module, select_layers

#: automatic factorisation refuses features with a prime factor above this (such a mode
#: would make one core as large as the layer); pass the modes by hand instead
MAX_PRIME_MODE = 64


def _factorizations(n: int, count: int, smallest: int) -> Iterator[tuple[int, ...]]:
    """Every non-decreasing tuple of ``count`` factors ``≥ smallest`` whose product is ``n``."""
    if count == 1:
        if n >= smallest:
            yield (n,)
        return
    f = smallest
    while f ** count <= n:
        if n % f == 0:
            for rest in _factorizations(n // f, count - 1, f):
                yield (f,) + rest
        f += 1


def balanced_factors(n: int, count: int, max_prime: int = MAX_PRIME_MODE) -> list[int]:
    """``n`` as a product of ``count`` factors ≥ 2, as equal as possible.

    "Balanced" minimises ``Σ_k (log f_k)²`` (the product, i.e. ``Σ log f_k``, is fixed), so
    784 in four factors is ``4·4·7·7`` and 300 is ``3·4·5·5``.

    Args:
        n: the number to factor (in_features or out_features).
        count: how many factors.
        max_prime: refuse ``n`` with a prime factor above this.

    Returns:
        The factors in ascending order.

    Raises:
        RecipeError: a prime factor above ``max_prime``, or fewer than ``count`` prime factors.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise RecipeError(f"tensor train: cannot factor {n!r} (expected an integer ≥ 2)")
    rest, p, largest = n, 2, 1
    while p * p <= rest:
        while rest % p == 0:
            rest, largest = rest // p, p
        p += 1
    largest = max(largest, rest)
    if largest > max_prime:
        raise RecipeError(f"tensor train: {n} has the prime factor {largest} > {max_prime}; give the modes by hand")
    best = min(_factorizations(n, count, 2), key=lambda fs: sum(math.log(f) ** 2 for f in fs), default=None)
    if best is None:
        raise RecipeError(f"tensor train: {n} has fewer than {count} prime factors; use fewer cores")
    return list(best)


def tt_modes(in_features: int, out_features: int, cores: int | None = None, max_cores: int = 4,
             max_prime: int = MAX_PRIME_MODE) -> tuple[list[int], list[int]]:
    """Automatic modes ``(m_1 … m_d), (n_1 … n_d)`` for a TT layer ``in_features → out_features``.

    Each side is split into ``d`` balanced factors (:func:`balanced_factors`); the in modes
    go descending and the out modes ascending (784 → 300: ``7·7·4·4`` and ``3·4·5·5``).  The
    core sizes ``m_k n_k`` stay similar (21, 28, 20, 20), and the forward pass, whose step
    ``k`` costs ``(n_1⋯n_{k−1}) r_{k−1} m_k n_k r_k (m_{k+1}⋯m_d)`` MACs, consumes the large
    input modes first and produces the small output modes first, which keeps the running
    tensor small: at TT-rank 8, 176k MACs per sample against 675k for the reverse order.

    Args:
        in_features, out_features: the layer's sizes.
        cores: ``d``; default the largest ``d ≤ max_cores`` for which both sides split
            into ``d`` factors ≥ 2.
        max_cores: the largest ``d`` tried.
        max_prime: refuse features with a larger prime factor.

    Returns:
        ``(in_modes, out_modes)``.

    Raises:
        RecipeError: no such split (a large prime factor, or too few factors).
    """
    if cores is None:
        for d in range(max_cores, 1, -1):
            try:
                return tt_modes(in_features, out_features, d, max_cores, max_prime)
            except RecipeError:
                if d == 2:
                    raise
        raise RecipeError(f"tensor train: max_cores must be ≥ 2, got {max_cores}")
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise RecipeError(f"tensor train: cores must be a positive integer, got {cores!r}")
    return (sorted(balanced_factors(in_features, cores, max_prime), reverse=True),
            balanced_factors(out_features, cores, max_prime))


def tt_svd(weight: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Any = None,
           relative_error: float | None = None) -> tuple[list[torch.Tensor], dict]:
    """TT-SVD of a fully connected weight (see the module docstring).

    Args:
        weight: ``out_features × in_features`` (``nn.Linear`` layout).
        in_modes, out_modes: factors of in_features and out_features, ``d`` each.
        ranks: rank caps (see :func:`efficientdl.nn.tt_ranks`); None: no cap.
        relative_error: ``ε``; keep at each step the fewest singular values with
            ``δ_k ≤ ε ‖W‖_F / √(d − 1)`` (then ``‖W − TT‖_F ≤ ε ‖W‖_F``); None: ranks only.

    Returns:
        ``(cores, info)``: float64 cores ``(r_{k−1}, m_k, n_k, r_k)``; ``info`` with
        ``ranks`` (the ``d + 1`` ranks kept), ``step_errors`` (``δ_k``) and
        ``error_bound`` ``= √(Σ δ_k²)``.

    Raises:
        RecipeError: modes that do not multiply to the weight's sizes, or bad ranks.
    """
    in_modes, out_modes = [int(m) for m in in_modes], [int(n) for n in out_modes]
    d = len(in_modes)
    if d != len(out_modes) or d == 0:
        raise RecipeError(f"tensor train: in modes {in_modes} and out modes {out_modes} must have the same length")
    if min(in_modes + out_modes) < 1:
        raise RecipeError(f"tensor train: modes {in_modes} × {out_modes} must be positive")
    if math.prod(in_modes) != weight.shape[1] or math.prod(out_modes) != weight.shape[0]:
        raise RecipeError(f"tensor train: modes {in_modes} × {out_modes} do not multiply to the weight's "
                          f"{weight.shape[1]} inputs × {weight.shape[0]} outputs")
    if relative_error is not None and not 0 <= relative_error < 1:
        raise RecipeError(f"tensor train: relative_error must be in [0, 1), got {relative_error}")
    try:
        caps = tt_ranks(ranks if ranks is not None else weight.numel(), in_modes, out_modes)
    except EdlError as error:
        raise RecipeError(f"tensor train: {error}") from None
    w = weight.detach().double()
    tail_limit = relative_error * float(torch.linalg.norm(w)) / math.sqrt(d - 1) if relative_error and d > 1 else 0.0
    # A[i_1, j_1, i_2, j_2, …]: W.T is (in, out) = (m_1 … m_d, n_1 … n_d); interleave the two halves
    tensor = w.t().reshape(*in_modes, *out_modes).permute(*[a for k in range(d) for a in (k, d + k)])
    rest = tensor.reshape(-1)
    cores, deltas, kept = [], [], [1]
    for k in range(d - 1):
        unfolding = rest.reshape(kept[-1] * in_modes[k] * out_modes[k], -1)
        u, s, vh = torch.linalg.svd(unfolding, full_matrices=False)
        tails = torch.cumsum((s ** 2).flip(0), 0).flip(0).sqrt()        # tails[i] = √(Σ_{l≥i} σ_l²)
        r = min(caps[k + 1], len(s))
        if tail_limit:
            r = min(r, max(1, int((tails > tail_limit).sum())))
        deltas.append(float(tails[r]) if r < len(s) else 0.0)
        cores.append(u[:, :r].reshape(kept[-1], in_modes[k], out_modes[k], r))
        rest = s[:r, None] * vh[:r]
        kept.append(r)
    cores.append(rest.reshape(kept[-1], in_modes[-1], out_modes[-1], 1))
    kept.append(1)
    return cores, {"ranks": kept, "step_errors": deltas, "error_bound": math.sqrt(sum(x * x for x in deltas))}


def tt_linear(layer: nn.Linear, ranks: Any = None, relative_error: float | None = None,
              in_modes: Sequence[int] | None = None, out_modes: Sequence[int] | None = None,
              cores: int | None = None) -> tuple[TTLinear, dict]:
    """Convert ``layer`` into a :class:`~efficientdl.nn.TTLinear` by TT-SVD.

    Args:
        layer: an ``nn.Linear``.
        ranks: TT-rank caps (one number, ``d − 1`` inner ranks or ``d + 1`` ranks).
        relative_error: target ``‖W − TT‖_F / ‖W‖_F`` (see :func:`tt_svd`).
        in_modes, out_modes: the factors of in/out features; default :func:`tt_modes`.
        cores: ``d`` for the automatic modes.

    Returns:
        ``(tt_layer, info)``; ``info``: ``in_modes``, ``out_modes``, ``ranks``,
        ``params_before`` (``in · out``) and ``params_after`` (core weights; biases not
        counted), ``macs_before`` / ``macs_after`` per sample, ``frobenius_error``
        (measured ``‖W − TT‖_F``), ``error_bound`` (``√(Σ δ_k²)``), ``step_errors``,
        ``relative_error`` (measured, over ``‖W‖_F``).

    Raises:
        RecipeError: neither ranks nor relative_error given, bad modes or ranks.
    """
    if ranks is None and relative_error is None:
        raise RecipeError("tensor train: give ranks, relative_error or both")
    if (in_modes is None) != (out_modes is None):
        raise RecipeError("tensor train: give both in_modes and out_modes, or neither")
    if in_modes is None:
        in_modes, out_modes = tt_modes(layer.in_features, layer.out_features, cores)
    factors, info = tt_svd(layer.weight, in_modes, out_modes, ranks, relative_error)
    tt = TTLinear(in_modes, out_modes, info["ranks"], bias=layer.bias is not None).to(layer.weight)
    with torch.no_grad():
        for core, value in zip(tt.cores, factors):
            core.copy_(value)
        if layer.bias is not None:
            tt.bias.copy_(layer.bias)
        w = layer.weight.detach().double()
        error = float(torch.linalg.norm(w - tt.full_weight().double()))
    return tt, {"in_modes": list(in_modes), "out_modes": list(out_modes), "ranks": info["ranks"],
                "params_before": layer.weight.numel(), "params_after": tt.weight_count(),
                "macs_before": layer.weight.numel(), "macs_after": tt.macs(),
                "frobenius_error": error, "error_bound": info["error_bound"], "step_errors": info["step_errors"],
                "relative_error": error / max(float(torch.linalg.norm(w)), 1e-300)}


def tensor_train(model: nn.Module, ranks: Any = None, relative_error: Any = None, layers: list[str] | None = None,
                 in_modes: Any = None, out_modes: Any = None, cores: Any = None) -> tuple[nn.Module, dict[str, dict]]:
    """Replace fully connected layers of ``model`` (in place) by TT layers (see :func:`tt_linear`).

    Every setting is one value for all layers or a per-layer mapping (layer names,
    ``"Linear"`` or ``"default"``); a layer whose ``ranks`` and ``relative_error`` are
    both None is kept.

    Args:
        model: any ``nn.Module``.
        ranks: TT-rank caps, e.g. ``8`` or ``{"fc1": [4, 8, 4]}``.
        relative_error: target relative Frobenius error per layer.
        layers: only these layer names (default: every ``nn.Linear``).
        in_modes, out_modes: factorisations of the features (default: automatic).
        cores: number of cores for the automatic factorisation (default: up to 4).

    Returns:
        ``(model, {layer name: info})``.  Modes and ranks are recorded in
        ``model.edl_arch["transforms"]`` so that a saved file rebuilds the TT layers.

    Raises:
        RecipeError: a name that is not a fully connected layer of the model, or bad settings.
    """
    specs = {"ranks": ranks, "relative_error": relative_error, "in_modes": in_modes, "out_modes": out_modes,
             "cores": cores}
    for what, spec in specs.items():
        check_spec_keys(spec, model, f"tensor train {what}")
    report = {}
    for name, module in select_layers(model, nn.Linear, layers, "tensor train"):
        settings = {k: layer_setting(v, name, module, k) for k, v in specs.items()}
        if settings["ranks"] is None and settings["relative_error"] is None:
            continue
        try:
            new, info = tt_linear(module, **settings)
        except RecipeError as error:
            raise RecipeError(str(error).replace("tensor train:", f"tensor train: layer '{name}':", 1)) from None
        replace_module(model, name, new)
        report[name] = info
    if report:
        record_transform(model, "tt", layers={name: {"in_modes": info["in_modes"], "out_modes": info["out_modes"],
                                                     "ranks": info["ranks"]} for name, info in report.items()})
    return model, report


@register_transform("tt")
def _replay_tensor_train(model: nn.Module, layers: dict[str, dict]) -> None:
    """Rebuild the TT layers of :func:`tensor_train` (their cores come from the file)."""
    linear = dict(select_layers(model, nn.Linear, list(layers), "tensor train"))
    for name, spec in layers.items():
        module = linear[name]
        new = TTLinear([int(m) for m in spec["in_modes"]], [int(n) for n in spec["out_modes"]],
                       [int(r) for r in spec["ranks"]], bias=module.bias is not None)
        if (new.in_features, new.out_features) != (module.in_features, module.out_features):
            raise ValueError(f"'{name}' has {module.in_features} → {module.out_features} features, the recorded "
                             f"modes give {new.in_features} → {new.out_features}")
        replace_module(model, name, new)
    record_transform(model, "tt", layers=layers)
