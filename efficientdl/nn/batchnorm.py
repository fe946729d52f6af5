"""Evaluation-mode BatchNorm as one precomputed per-channel affine, in the compressed runtime.

In evaluation mode ``nn.BatchNorm2d`` is a fixed affine map per channel (Ioffe & Szegedy,
ICML'15, §3.1: at inference "the normalization is simply a linear transform applied to each
activation"):

    y = γ (x − μ) / √(σ² + ε) + β = s · x + t,   s = γ / √(σ² + ε),   t = β − μ · s

with ``μ, σ²`` the running statistics.  Inference engines fold it into the preceding
convolution's weights (ONNX Runtime, TensorRT, :mod:`efficientdl.compress.fold`); a weight
held compressed with a shared codebook cannot absorb a per-channel scale without losing the
sharing, so the runtime keeps the convolution as it is and gives the BatchNorm module a
``forward`` of its own (an instance attribute, as the chains give the model one): one
``torch.addcmul(t, x, s)`` on ``s, t`` computed once.  The module, its parameters, buffers
and state dict stay the user's, and its calls keep their hooks (``nn.Module.__call__``
runs them around the instance's ``forward``).  On small activations the module's own
path (``nn.BatchNorm2d.forward`` → ``F.batch_norm`` → the threaded native kernel) costs
several times that: on a 2-core AMD EPYC (Zen 3, family 25 model 1, AVX2) 25–27 µs against 6–10 µs for one
``(1, C, H, W)`` map, and MobileNetV2 calls it 52 times per image.

The affine is exact to rounding (one multiply-add instead of subtract, divide, multiply and
add: differences of a few float32 ulps).  Every call checks that it still stands for the
module: the module in evaluation mode, a float32 CPU input of four dimensions and the right
channel count, no gradient wanted through it; otherwise the class's own ``forward`` runs.
Changed statistics or parameters (assigned anew or modified in place: the tensors' version
counters) or a changed ε recompute ``s`` and ``t``.
"""

from __future__ import annotations

import torch
from torch import nn


class AffineForward:
    """``forward`` of one evaluation-mode ``nn.BatchNorm2d``: ``x · s + t`` (see the module docstring).

    Attributes:
        name: the module's qualified name in the model.
        affine_calls / module_calls: how many calls took each path (the affine, the class's own forward).
    """

    def __init__(self, bn: nn.BatchNorm2d, name: str) -> None:
        self.bn = bn
        self.name = name
        self.affine_calls = 0
        self.module_calls = 0
        self._refresh()

    def _tensors(self) -> tuple:
        # the dicts themselves: nn.Module.__getattr__ (buffers and parameters) costs ~0.3 µs a name
        bn = self.bn
        return (bn._buffers.get("running_mean"), bn._buffers.get("running_var"), bn._parameters.get("weight"),
                bn._parameters.get("bias"))

    def _stale(self) -> bool:
        """The module's statistics, parameters or ε are not those ``s`` and ``t`` were computed from."""
        for t, (held, version) in zip(self._tensors(), self._held):
            if t is not held or (t is not None and t._version != version):
                return True
        return self.bn.eps != self._eps

    def _refresh(self) -> None:
        """``s = γ / √(σ² + ε)`` and ``t = β − μ · s``, shaped ``(C, 1, 1)``, from the module's state now."""
        tensors = self._tensors()
        mean, var, gamma, beta = tensors
        with torch.no_grad():
            scale = torch.rsqrt(var.double() + self.bn.eps)
            if gamma is not None:
                scale = scale * gamma.double()
            shift = -mean.double() * scale
            if beta is not None:
                shift = shift + beta.double()
        self._scale = scale.float().reshape(-1, 1, 1).contiguous()
        self._shift = shift.float().reshape(-1, 1, 1).contiguous()
        self._held = tuple((t, None if t is None else t._version) for t in tensors)
        self._eps = self.bn.eps

    def _applies(self, x) -> bool:
        bn = self.bn
        if bn.training or type(x) is not torch.Tensor or x.dtype != torch.float32 or not x.is_cpu or x.dim() != 4:
            return False
        if x.shape[1] != self._scale.shape[0]:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(
                p is not None and p.requires_grad for p in (bn._parameters.get("weight"), bn._parameters.get("bias")))):
            return False
        return True

    def _current(self) -> bool:
        """``s`` and ``t`` stand for the module now: recomputed if its state changed, unless it
        can no longer be folded (its running statistics removed)."""
        if not self._stale():
            return True
        if not _foldable(self.bn):
            return False
        self._refresh()
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._applies(x) and self._current():
            self.affine_calls += 1
            return torch.addcmul(self._shift, x, self._scale)
        self.module_calls += 1
        return type(self.bn).forward(self.bn, x)


def _foldable(m: nn.Module) -> bool:
    """Exactly ``nn.BatchNorm2d`` (a subclass may change its forward) with running statistics."""
    return (type(m) is nn.BatchNorm2d and m.track_running_stats and m._buffers.get("running_mean") is not None
            and m._buffers.get("running_var") is not None)


def install(model: nn.Module) -> list[str]:
    """Give every foldable ``nn.BatchNorm2d`` of ``model`` its :class:`AffineForward`.

    A module that already has an instance ``forward`` of another kind (the user's) is left alone.

    Args:
        model: any module tree.

    Returns:
        The qualified names of the modules given one, in module order.
    """
    names = []
    for name, m in model.named_modules():
        if not _foldable(m):
            continue
        own = m.__dict__.get("forward")
        if own is not None and not isinstance(own, AffineForward):
            continue
        m.forward = AffineForward(m, name)
        names.append(name)
    return names


def uninstall(model: nn.Module) -> list[tuple[nn.Module, AffineForward]]:
    """Remove every :class:`AffineForward` from ``model``'s modules; returns them for :func:`restore`."""
    removed = []
    for m in model.modules():
        own = m.__dict__.get("forward")
        if isinstance(own, AffineForward):
            del m.__dict__["forward"]
            removed.append((m, own))
    return removed


def restore(removed: list[tuple[nn.Module, AffineForward]]) -> None:
    """Put back what :func:`uninstall` removed."""
    for m, own in removed:
        m.forward = own


__all__ = ["AffineForward", "install", "uninstall", "restore"]
