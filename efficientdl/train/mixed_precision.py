"""Mixed-precision training with fp32 master weights and loss scaling
(Micikevicius et al., "Mixed Precision Training", ICLR'18; the lecture's NVIDIA recipe).

One training step:

1. the fp16 copy of the model computes the forward pass and the loss (fp16 weights,
   activations and gradients);
2. the loss is multiplied by the scale ``S`` before backpropagation, so that small
   gradients survive in fp16 instead of flushing to zero below ``2⁻²⁴``;
3. the fp16 gradients are copied to fp32 and divided by ``S``; if any is inf or NaN the
   step is **skipped** (and, with dynamic scaling, ``S`` is halved);
4. the optimizer updates the **fp32 master weights**, which are copied back into the fp16
   model.

Dynamic scaling doubles ``S`` after ``growth_interval`` clean steps.  The standard
``torch.amp`` path (autocast + GradScaler for fp16, or bf16 without scaling) is
:func:`amp_step` — the option most users know; this module's own implementation is the
one that shows the mechanism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

FP16_MIN_SUBNORMAL = 2.0 ** -24
FP16_MAX = 65504.0


@dataclass
class LossScaler:
    """Static (``dynamic=False``) or dynamic loss scale.

    Attributes:
        scale: current ``S``.
        dynamic: halve on overflow, double after ``growth_interval`` clean steps.
        growth_interval: clean steps before doubling.
        skipped: steps skipped because of inf/NaN gradients.
        clean: clean steps since the last change.
        history: ``S`` after each step.
    """

    scale: float = 2.0 ** 15
    dynamic: bool = True
    growth_interval: int = 2000
    skipped: int = 0
    clean: int = 0
    history: list = field(default_factory=list)

    def update(self, overflow: bool) -> None:
        """Record one step's outcome and adjust the scale."""
        if overflow:
            self.skipped += 1
            self.clean = 0
            if self.dynamic:
                self.scale = max(self.scale / 2.0, 1.0)
        else:
            self.clean += 1
            if self.dynamic and self.clean >= self.growth_interval:
                self.scale *= 2.0
                self.clean = 0
        self.history.append(self.scale)


class MixedPrecisionOptimizer:
    """fp16 model + fp32 master weights + loss scaling around any torch optimizer.

    Args:
        model: the model; it is converted to fp16 in place (BatchNorm stays fp32).
        make_optimizer: builds the optimizer from the list of fp32 master parameters.
        scaler: the loss scaler.

    Use::

        mp = MixedPrecisionOptimizer(model, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9))
        for x, y in loader:
            loss = mp.step(lambda: F.cross_entropy(model(x.half()), y))
    """

    def __init__(self, model: nn.Module, make_optimizer, scaler: LossScaler | None = None) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().clone().float().requires_grad_(True) for p in self.params]
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                for p in module.parameters(recurse=False):
                    p.data = p.data.half()
        self.optimizer = make_optimizer(self.master)
        self.scaler = scaler or LossScaler()

    def step(self, closure) -> float:
        """Forward + scaled backward + (unless gradients overflowed) an fp32 master update.

        Args:
            closure: computes the loss with the fp16 model.

        Returns:
            The unscaled loss value.
        """
        for p in self.params:
            p.grad = None
        loss = closure()
        (loss.float() * self.scaler.scale).backward()
        grads = [p.grad.float() / self.scaler.scale if p.grad is not None else torch.zeros_like(m)
                 for p, m in zip(self.params, self.master)]
        # one device-to-host transfer per step (a check per tensor would stall a GPU once per tensor)
        overflow = bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if not overflow:
            for m, g in zip(self.master, grads):
                m.grad = g
            self.optimizer.step()
            with torch.no_grad():
                for p, m in zip(self.params, self.master):
                    p.copy_(m.to(p.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update(overflow)
        return float(loss.detach())


def amp_step(model: nn.Module, optimizer: torch.optim.Optimizer, closure, dtype: torch.dtype,
             grad_scaler=None) -> float:
    """One step with ``torch.amp``: autocast to ``dtype`` (fp16 with a GradScaler, or bf16).

    Returns:
        The loss value.
    """
    device = next(model.parameters()).device.type
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=dtype):
        loss = closure()
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def gradient_underflow(model: nn.Module, loss: torch.Tensor, scales=(1.0, 8.0, 128.0, 1024.0, 32768.0)) -> dict:
    """Why scaling is needed: the share of fp32 gradient values that fp16 would flush to zero.

    Backpropagates ``loss`` in fp32 once, then for each scale ``S`` counts the nonzero
    gradient values ``g`` with ``|S · g| < 2⁻²⁴`` (below fp16's smallest subnormal) and
    those with ``|S · g| > 65504`` (overflow).

    Returns:
        ``{"log2_magnitudes": [...] (for a histogram), "scales": {S: {"underflow": share,
        "overflow": share}}}``.
    """
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = torch.cat([p.grad.detach().flatten().double() for p in model.parameters() if p.grad is not None])
    grads = grads[grads != 0].abs()
    out = {"log2_magnitudes": torch.log2(grads).tolist() if grads.numel() <= 2_000_000 else
           torch.log2(grads[torch.randperm(grads.numel())[:2_000_000]]).tolist(), "scales": {}}
    n = max(1, grads.numel())
    for s in scales:
        out["scales"][s] = {"underflow": float(((grads * s) < FP16_MIN_SUBNORMAL).sum()) / n,
                            "overflow": float(((grads * s) > FP16_MAX).sum()) / n}
    out["fp16_min_log2"] = math.log2(FP16_MIN_SUBNORMAL)
    out["fp16_max_log2"] = math.log2(FP16_MAX)
    return out
