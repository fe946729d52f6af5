"""A fully connected layer in tensor-train format (Novikov et al., "Tensorizing Neural
Networks", NIPS 2015).

With ``in_features = m_1 ⋯ m_d`` and ``out_features = n_1 ⋯ n_d``, an input index ``i`` is
read as the multi-index ``(i_1, …, i_d)`` and an output index ``j`` as ``(j_1, …, j_d)``
(row-major, ``i_1`` slowest).  The weight is never stored; its entries are products of
``d`` small matrices, slices of the cores ``G_k`` of shape ``(r_{k−1}, m_k, n_k, r_k)``:

    W[j, i] = G_1[:, i_1, j_1, :] · G_2[:, i_2, j_2, :] ⋯ G_d[:, i_d, j_d, :],   r_0 = r_d = 1,

so the layer holds ``Σ_k r_{k−1} m_k n_k r_k`` weights instead of ``∏ m_k · ∏ n_k``.  The
forward pass contracts the input with one core after the other (the paper's Algorithm):
after step ``k`` the running tensor has shape ``(batch, n_1⋯n_k, r_k, m_{k+1}⋯m_d)``, and
step ``k`` costs ``(n_1⋯n_{k−1}) · r_{k−1} m_k n_k r_k · (m_{k+1}⋯m_d)`` MACs per sample.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError


def tt_ranks(ranks: int | Sequence[int], in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """The full list ``[r_0 = 1, r_1, …, r_{d−1}, r_d = 1]`` of TT-ranks, each capped at its maximum.

    The bond ``k`` cannot usefully exceed ``min(∏_{l≤k} m_l n_l, ∏_{l>k} m_l n_l)``, the
    smaller side of the ``k``-th unfolding of the weight tensor.

    Args:
        ranks: one rank for every bond, the ``d − 1`` inner ranks, or all ``d + 1`` ranks
            (then the first and last must be 1).
        in_modes, out_modes: the ``d`` factors of in_features and out_features.

    Returns:
        ``d + 1`` integers.

    Raises:
        ModelError: wrong count, a rank below 1, or end ranks other than 1.
    """
    d = len(in_modes)
    if isinstance(ranks, (bool, str)) or not isinstance(ranks, (int, Sequence)):
        raise ModelError(f"TT ranks must be an integer or a list of integers, got {ranks!r}")
    if isinstance(ranks, int):
        inner = [ranks] * (d - 1)
    elif len(ranks) == d + 1:
        if ranks[0] != 1 or ranks[-1] != 1:
            raise ModelError(f"TT ranks {list(ranks)}: the first and last rank must be 1")
        inner = list(ranks[1:-1])
    elif len(ranks) == d - 1:
        inner = list(ranks)
    else:
        raise ModelError(f"TT ranks {list(ranks)}: expected {d - 1} inner ranks (or {d + 1} with the end ones) "
                         f"for {d} cores")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in inner):
        raise ModelError(f"TT ranks {inner}: every rank must be an integer ≥ 1")
    sizes = [m * n for m, n in zip(in_modes, out_modes)]
    caps = [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, d)]
    return [1] + [min(r, cap) for r, cap in zip(inner, caps)] + [1]


class TTLinear(nn.Module):
    """``y = W x + b`` with ``W`` in tensor-train format (see the module docstring).

    Args:
        in_modes: ``(m_1, …, m_d)``, with ``∏ m_k = in_features``.
        out_modes: ``(n_1, …, n_d)``, with ``∏ n_k = out_features``.
        ranks: TT-ranks (see :func:`tt_ranks`); capped at their maxima.
        bias: add a learned bias of ``out_features`` entries.

    Attributes:
        cores: ``nn.ParameterList`` of the ``d`` cores, core ``k`` of shape
            ``(r_{k−1}, m_k, n_k, r_k)``.
        ranks: the ``d + 1`` TT-ranks.

    The cores are initialised i.i.d. normal with a variance chosen so that each entry of
    the full weight has variance ``1 / (3 in_features)``, that of ``nn.Linear``'s default.
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: int | Sequence[int] = 8,
                 bias: bool = True) -> None:
        super().__init__()
        in_modes, out_modes = list(in_modes), list(out_modes)
        if len(in_modes) != len(out_modes) or not in_modes:
            raise ModelError(f"TTLinear: in_modes {in_modes} and out_modes {out_modes} must be non-empty "
                             "and of the same length")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in in_modes + out_modes):
            raise ModelError(f"TTLinear: modes {in_modes}, {out_modes} must be positive integers")
        self.in_modes, self.out_modes = in_modes, out_modes
        self.in_features, self.out_features = math.prod(in_modes), math.prod(out_modes)
        self.ranks = tt_ranks(ranks, in_modes, out_modes)
        std = (1.0 / (3 * self.in_features * math.prod(self.ranks))) ** (1.0 / (2 * len(in_modes)))
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(self.ranks[k], m, n, self.ranks[k + 1]) * std)
            for k, (m, n) in enumerate(zip(in_modes, out_modes)))
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias = nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (…, in_features) → (…, out_features)``, contracting one core at a time."""
        if x.shape[-1] != self.in_features:
            raise ModelError(f"TTLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        # running tensor: (batch, n_1⋯n_{k-1}, r_{k-1}, m_k, m_{k+1}⋯m_d)
        z = x.reshape(-1, 1, 1, self.in_features)
        for core, m in zip(self.cores, self.in_modes):
            batch, done, rank, rest = z.shape
            z = z.reshape(batch, done, rank, m, rest // m)
            z = torch.einsum("bprms,rmnq->bpnqs", z, core)
            z = z.reshape(batch, done * core.shape[2], core.shape[3], rest // m)
        y = z.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def full_weight(self) -> torch.Tensor:
        """The dense ``out_features × in_features`` matrix (``nn.Linear``'s layout) the cores encode."""
        full = self.cores[0].reshape(self.in_modes[0], self.out_modes[0], -1)  # (m_1, n_1, r_1)
        for core in self.cores[1:]:
            # (M, N, r) × (r, m, n, r') → (M, m, N, n, r')
            full = torch.einsum("abr,rmnq->ambnq", full, core)
            full = full.reshape(full.shape[0] * full.shape[1], full.shape[2] * full.shape[3], -1)
        return full.reshape(self.in_features, self.out_features).t()

    def weight_count(self) -> int:
        """Weights in the cores: ``Σ_k r_{k−1} m_k n_k r_k`` (the bias not included)."""
        return sum(core.numel() for core in self.cores)

    def macs(self) -> int:
        """MACs per sample of :meth:`forward`: ``Σ_k (n_1⋯n_{k−1}) r_{k−1} m_k n_k r_k (m_{k+1}⋯m_d)``."""
        total = 0
        for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)):
            total += (math.prod(self.out_modes[:k]) * self.ranks[k] * m * n * self.ranks[k + 1]
                      * math.prod(self.in_modes[k + 1:]))
        return total

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")
