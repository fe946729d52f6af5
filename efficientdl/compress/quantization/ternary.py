"""Ternary and binary weights.

* **Trained ternary quantization** (TTQ; Zhu, Han, Mao, Dally, ICLR'17).  Each layer
  keeps latent full-precision weights ``w̃`` and learns two scales ``W_p, W_n > 0``:

      w_t = W_p  if w̃ > Δ,   0  if |w̃| ≤ Δ,   −W_n  if w̃ < −Δ,     Δ = t · max|w̃|

  (``t = 0.05``), or ``Δ`` set so that a fixed share of the weights is zero.  Gradients
  (the paper's Eq. 7–8): the scales receive the summed gradients of their weights,
  ``∂L/∂W_p = Σ_{i∈I_p} ∂L/∂w_t(i)`` and ``∂L/∂W_n = −Σ_{i∈I_n} ∂L/∂w_t(i)`` (the minus
  because ``W_n`` is stored as a magnitude) — by default divided by ``|I_p|``, ``|I_n|``
  (see :class:`TernaryWeight`) — and the latent weights receive scaled gradients
  ``∂L/∂w̃ = W_p·g`` on ``I_p``, ``g`` on ``I_z``, ``W_n·g`` on ``I_n``.
* **Ternary weight networks** (TWN; Li & Liu 2016), the fixed-scale baseline:
  ``Δ = 0.7 · mean|w̃|``, one scale ``α = mean(|w̃| : |w̃| > Δ)``, straight-through gradient.
* **Binary weights** (BinaryConnect / XNOR-Net style): ``α · sign(w̃)`` with
  ``α = mean|w̃|``, straight-through gradient.

Each is a ``torch.nn.utils.parametrize`` parametrization of the layer's weight, so the
latent weights stay on the model and train with any optimizer; a ternary layer has three
distinct values and is stored by the compressed file as a 2-bit shared layer (a binary
one as 2 values + the unused zero, also 2 bits).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import RecipeError
from ..layers import compressible_layers, retie, tied_pairs

METHODS = ("ttq", "twn", "binary")


class _TTQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta, mean_scale_grad):  # noqa: D401 - autograd API
        pos = w > delta
        neg = w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        ctx.mean_scale_grad = mean_scale_grad
        return torch.where(pos, wp, torch.where(neg, -wn, torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, g):  # noqa: D401 - autograd API
        pos, neg, wp, wn = ctx.saved_tensors
        grad_w = torch.where(pos, wp * g, torch.where(neg, wn * g, g))
        grad_wp = (g * pos).sum().reshape(wp.shape)
        grad_wn = -(g * neg).sum().reshape(wn.shape)
        if ctx.mean_scale_grad:
            grad_wp = grad_wp / pos.sum().clamp_min(1)
            grad_wn = grad_wn / neg.sum().clamp_min(1)
        return grad_w, grad_wp, grad_wn, None, None


class _STE(torch.autograd.Function):
    """Forward the quantized value, pass the gradient straight through to the latent weight."""

    @staticmethod
    def forward(ctx, w, q):  # noqa: D401 - autograd API
        return q

    @staticmethod
    def backward(ctx, g):  # noqa: D401 - autograd API
        return g, None


class TernaryWeight(nn.Module):
    """TTQ parametrization: latent weight in, ternary weight ``{−W_n, 0, W_p}`` out.

    Args:
        weight: the layer's current weight (initialises ``W_p``, ``W_n`` as the mean
            magnitude of the weights above / below the threshold).
        threshold: ``t`` of ``Δ = t · max|w̃|``.
        sparsity: instead of ``t``, the share of weights set to zero (``Δ`` = that quantile of |w̃|).
        mean_scale_grad: divide the scales' summed gradients by ``|I_p|`` and ``|I_n|``
            (default).  The paper's sum is over every weight of the layer, so with plain
            SGD one learning rate cannot suit both the scales and the latent weights (a
            LeNet-5 fc1 diverges within ten steps at lr 0.001); the mean keeps the
            gradient's direction and makes the step size independent of the layer size.
            False gives the paper's sum exactly.
    """

    def __init__(self, weight: torch.Tensor, threshold: float = 0.05, sparsity: float | None = None,
                 mean_scale_grad: bool = True) -> None:
        super().__init__()
        if sparsity is None and not 0 <= threshold < 1:
            raise RecipeError(f"ternary threshold must be in [0, 1), got {threshold}")
        if sparsity is not None and not 0 <= sparsity < 1:
            raise RecipeError(f"ternary sparsity must be in [0, 1), got {sparsity}")
        self.threshold, self.sparsity, self.mean_scale_grad = threshold, sparsity, mean_scale_grad
        w = weight.detach()
        delta = self.delta(w)
        above, below = w[w > delta], -w[w < -delta]
        self.wp = nn.Parameter(above.mean().reshape(1) if above.numel() else w.abs().mean().reshape(1))
        self.wn = nn.Parameter(below.mean().reshape(1) if below.numel() else w.abs().mean().reshape(1))

    def delta(self, w: torch.Tensor) -> torch.Tensor:
        """The threshold ``Δ`` for the latent weights ``w``."""
        w = w.detach().abs()
        if self.sparsity is not None:
            return torch.quantile(w.flatten().float(), self.sparsity).to(w.dtype) if w.numel() else w.sum()
        return self.threshold * w.max()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _TTQFunction.apply(w, self.wp.to(w.dtype), self.wn.to(w.dtype), self.delta(w), self.mean_scale_grad)

    def shares(self, w: torch.Tensor) -> tuple[float, float, float]:
        """Fractions of negative, zero and positive weights (the paper's Figure 2)."""
        d = self.delta(w)
        n = max(1, w.numel())
        neg, pos = int((w < -d).sum()), int((w > d).sum())
        return neg / n, (n - neg - pos) / n, pos / n


class FixedTernaryWeight(nn.Module):
    """TWN baseline: ``α · sign(w̃) · [|w̃| > 0.7 · mean|w̃|]``, straight-through gradient."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a = w.detach().abs()
        delta = 0.7 * a.mean()
        keep = a > delta
        alpha = a[keep].mean() if keep.any() else a.mean()
        return _STE.apply(w, alpha * torch.sign(w.detach()) * keep)


class BinaryWeight(nn.Module):
    """Binary baseline: ``mean|w̃| · sign(w̃)`` (zero maps to +α), straight-through gradient."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a = w.detach().abs().mean()
        return _STE.apply(w, torch.where(w.detach() >= 0, a, -a))


def ternarize(model: nn.Module, method: str = "ttq", threshold: float = 0.05, sparsity: float | None = None,
              keep_first_last: bool = True, mean_scale_grad: bool = True) -> list[str]:
    """Give the ``Linear``/``Conv2d`` layers of ``model`` ternary (or binary) weights, in place.

    Args:
        model: any ``nn.Module`` (trained weights make the best start, as in the paper).
        method: ``"ttq"`` (learned scales), ``"twn"`` (fixed scale) or ``"binary"``.
        threshold, sparsity: TTQ's threshold rule (see :class:`TernaryWeight`).
        keep_first_last: leave the first and last layer in full precision (the paper's default).
        mean_scale_grad: TTQ's scale gradient as a mean (default) or the paper's sum.

    Returns:
        The names of the layers quantized.
    """
    if method not in METHODS:
        raise RecipeError(f"ternary method must be one of {', '.join(METHODS)}, got {method!r}")
    ties = tied_pairs(model)
    aliases = {(id(m), a) for _, (m, a) in ties}
    layers = [(n, m) for n, m in compressible_layers(model) if (id(m), "weight") not in aliases]
    if keep_first_last and len(layers) > 2:
        layers = layers[1:-1]
    names = []
    for name, module in layers:
        if method == "ttq":
            p = TernaryWeight(module.weight, threshold, sparsity, mean_scale_grad)
        elif method == "twn":
            p = FixedTernaryWeight()
        else:
            p = BinaryWeight()
        parametrize.register_parametrization(module, "weight", p)
        names.append(name)
    retie(ties)
    return names


def ternary_state(model: nn.Module) -> dict[str, dict]:
    """For each TTQ layer: ``wp``, ``wn`` and the shares of negative / zero / positive weights."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, TernaryWeight):
                    neg, zero, pos = p.shares(module.parametrizations.weight.original)
                    out[name] = {"wp": p.wp.item(), "wn": p.wn.item(), "negative": neg, "zero": zero, "positive": pos}
    return out
