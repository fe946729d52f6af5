"""Winograd convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

For a 3×3 filter ``g`` and an ``α × α`` input tile ``d`` (``α = m + 2``), the minimal
filtering algorithm F(m×m, 3×3) gives an ``m × m`` output tile as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,

so the element-wise product costs ``α²`` multiplications per tile and channel pair
instead of the ``m² · 9`` of direct convolution: F(2×2,3×3) 16 vs 36 (2.25× fewer),
F(4×4,3×3) 36 vs 144 (4× fewer).  Summed over input channels, the products become
``α²`` independent matrix multiplications ``U_ξ (K×C) · V_ξ (C×P)``.

The transforms are built from interpolation points by the Cook–Toom construction
(:func:`winograd_matrices`): points 0, ±1, ±2, … and ∞; for m = 2 these are the paper's
matrices except for the sign of the point at infinity's column of Aᵀ and row of Bᵀ (the
two signs cancel), and for m = 4 Lavin & Gray's F(4×4,3×3) up to the signs of matching
rows of G and Bᵀ.  Larger tiles need larger points, whose powers grow, so their rounding
error grows too — the reason F(4×4,3×3) loses precision in fp16.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..core.parametrize import replace_module
from ..errors import ModelError

FILTER = 3
TILES = (2, 4)


def _points(count: int) -> list[Fraction]:
    pts = [Fraction(0)]
    k = 1
    while len(pts) < count:
        pts += [Fraction(k), Fraction(-k)]
        k += 1
    return pts[:count]


def winograd_matrices(m: int, r: int = FILTER) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Aᵀ, G, Bᵀ)`` of F(m, r) by the Cook–Toom construction, in float64.

    With ``α = m + r − 1`` and finite points ``p_0 … p_{α−2}`` plus the point at
    infinity: ``Aᵀ[i, j] = p_jⁱ`` (last column: 1 in the last row), ``G[j, k] = p_jᵏ / N_j``
    with ``N_j = Π_{l≠j} (p_j − p_l)`` (last row: 1 at the last column), and ``Bᵀ`` the
    coefficients of the Lagrange basis polynomials ``Π_{l≠j} (x − p_l)`` (times ``N_j``
    folded into G), completed by the row of ``M(x) = Π (x − p_l)`` for the point at
    infinity.

    Returns:
        ``AT (m × α)``, ``G (α × r)``, ``BT (α × α)``.
    """
    alpha = m + r - 1
    pts = _points(alpha - 1)
    at = [[Fraction(0)] * alpha for _ in range(m)]
    g = [[Fraction(0)] * r for _ in range(alpha)]
    bt = [[Fraction(0)] * alpha for _ in range(alpha)]
    for j, p in enumerate(pts):
        for i in range(m):
            at[i][j] = p ** i
        norm = Fraction(1)
        for l, q in enumerate(pts):
            if l != j:
                norm *= p - q
        sign = 1 if norm > 0 else -1                # a row sign of G and Bᵀ cancels; keep G's first column ≥ 0
        for k in range(r):
            g[j][k] = sign * p ** k / norm
        # coefficients (ascending) of Π_{l≠j} (x − p_l), a polynomial of degree n − 1
        poly = [Fraction(1)]
        for l, q in enumerate(pts):
            if l != j:
                poly = [(poly[i - 1] if i > 0 else 0) - q * (poly[i] if i < len(poly) else 0)
                        for i in range(len(poly) + 1)]
        for i, c in enumerate(poly):
            bt[j][i] = sign * c
    at[m - 1][alpha - 1] = Fraction(1)
    g[alpha - 1][r - 1] = Fraction(1)
    full = [Fraction(1)]                           # M(x) = Π (x − p_l), degree n
    for q in pts:
        full = [(full[i - 1] if i > 0 else 0) - q * (full[i] if i < len(full) else 0)
                for i in range(len(full) + 1)]
    for i, c in enumerate(full):
        bt[alpha - 1][i] = c

    def t(rows):
        return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float64)

    return t(at), t(g), t(bt)


class WinogradConv2d(nn.Module):
    """A 3×3, stride-1 convolution computed by Winograd's minimal filtering F(m×m, 3×3).

    Args:
        weight: ``(out_channels, in_channels, 3, 3)``.
        bias: optional ``(out_channels,)``.
        padding: zero padding on each side (int or pair).
        tile: output tile size ``m``: 2 for F(2×2,3×3), 4 for F(4×4,3×3).

    The filter transform ``U = G g Gᵀ`` is computed once (at construction) and kept.

    Example::

        layer = WinogradConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1), tile=4)
        y = layer(x)
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, padding=1, tile: int = 2) -> None:
        super().__init__()
        if tile not in TILES:
            raise ModelError(f"Winograd tile must be one of {TILES}, got {tile}")
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (FILTER, FILTER):
            raise ModelError(f"Winograd needs a 3×3 filter, got weight shape {tuple(weight.shape)}")
        self.tile = tile
        self.alpha = tile + FILTER - 1
        self.out_channels, self.in_channels = weight.shape[:2]
        self.padding = nn.modules.utils._pair(padding)
        at, g, bt = winograd_matrices(tile)
        dtype = weight.dtype
        self.register_buffer("AT", at.to(dtype))
        self.register_buffer("BT", bt.to(dtype))
        u = torch.einsum("ij,kcjl,ml->kcim", g, weight.detach().double(), g)       # G g Gᵀ
        self.register_buffer("U", u.permute(2, 3, 0, 1).reshape(self.alpha ** 2, self.out_channels,
                                                                 self.in_channels).to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, tile: int = 2, name: str = "") -> "WinogradConv2d":
        """Replace an ``nn.Conv2d``; refuses anything but 3×3, stride 1, dilation 1, groups 1,
        zero padding, naming the layer."""
        reason = unsupported_reason(conv)
        if reason:
            raise ModelError(f"{name or 'layer'}: Winograd F(m×m, 3×3) {reason}")
        return cls(conv.weight, conv.bias, conv.padding, tile)

    @property
    def multiplies_per_tile(self) -> int:
        """Element-wise multiplications per output tile and channel pair: ``α²``."""
        return self.alpha ** 2

    @property
    def direct_multiplies_per_tile(self) -> int:
        """What direct convolution needs for the same tile: ``m² · 9``."""
        return self.tile ** 2 * FILTER ** 2

    @property
    def multiply_reduction(self) -> float:
        """``direct / Winograd`` multiplications (2.25 for m = 2, 4 for m = 4)."""
        return self.direct_multiplies_per_tile / self.multiplies_per_tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"WinogradConv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        m, a = self.tile, self.alpha
        n, c, h, w = x.shape
        ph, pw = self.padding
        out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
        if out_h < 1 or out_w < 1:
            raise ModelError(f"input {h}×{w} is smaller than the 3×3 filter")
        th, tw = -(-out_h // m), -(-out_w // m)                          # tiles per dimension
        # pad so that th·m + 2 rows and tw·m + 2 columns exist
        x = F.pad(x, (pw, pw + tw * m + 2 - (w + 2 * pw), ph, ph + th * m + 2 - (h + 2 * ph)))
        d = x.unfold(2, a, m).unfold(3, a, m)                           # (N, C, th, tw, α, α)
        bt = self.BT.to(x.dtype)
        v = torch.einsum("ij,nchwjk,lk->ilnchw", bt, d, bt)             # Bᵀ d B: (α, α, N, C, th, tw)
        v = v.reshape(a * a, n, c, th * tw).permute(0, 2, 1, 3).reshape(a * a, c, n * th * tw)
        prod = torch.bmm(self.U.to(x.dtype), v)                         # (α², K, N·tiles)
        prod = prod.reshape(a, a, self.out_channels, n, th, tw)
        at = self.AT.to(x.dtype)
        y = torch.einsum("ij,jkonhw,lk->nohiwl", at, prod, at)          # Aᵀ M A: (N, K, th, m, tw, m)
        y = y.reshape(n, self.out_channels, th * m, tw * m)[:, :, :out_h, :out_w]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y.contiguous()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, F({self.tile}×{self.tile},3×3), padding={self.padding}, "
                f"{self.multiplies_per_tile} vs {self.direct_multiplies_per_tile} multiplies per tile")


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why a layer cannot run as Winograd F(m×m, 3×3), or None when it can."""
    if type(conv) is not nn.Conv2d:
        return f"needs an nn.Conv2d, got {type(conv).__name__}"
    if tuple(conv.kernel_size) != (3, 3):
        return f"needs a 3×3 kernel, got {conv.kernel_size[0]}×{conv.kernel_size[1]}"
    if tuple(conv.stride) != (1, 1):
        return f"needs stride 1, got {tuple(conv.stride)}"
    if tuple(conv.dilation) != (1, 1):
        return f"needs dilation 1, got {tuple(conv.dilation)}"
    if conv.groups != 1:
        return f"needs groups=1, got {conv.groups}"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return "needs numeric zero padding"
    return None


def to_winograd(model: nn.Module, tile: int = 2) -> tuple[nn.Module, list[str], dict[str, str]]:
    """Replace every eligible ``nn.Conv2d`` of ``model`` by a :class:`WinogradConv2d` (in place).

    Returns:
        ``(model, converted, skipped)`` — names converted, and ``{name: reason}`` for the
        convolutions left direct.
    """
    converted, skipped = [], {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d) or not name:
            continue
        reason = unsupported_reason(module)
        if reason:
            skipped[name] = reason
            continue
        replace_module(model, name, WinogradConv2d.from_conv(module, tile, name))
        converted.append(name)
    return model, converted, skipped
