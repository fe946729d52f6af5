"""Label-free corrections after post-training compression: BatchNorm re-estimation and bias correction.

Pruning, weight sharing or quantizing a trained network without retraining changes
the distribution of every layer's output.  Two cheap corrections, both from unlabeled
calibration samples and neither touching a weight:

* :func:`reestimate_batchnorm` — recompute the running mean and variance of every
  BatchNorm on the compressed network's own activations (AdaBN, Li, Wang, Shi, Liu, Hou
  2016; "BN re-estimation" in Nagel et al., "A White Paper on Neural Network
  Quantization", 2021, §4.6).  The stored statistics are those of the uncompressed
  network; with them a BatchNorm no longer centres and scales its input.
* :func:`correct_bias` — empirical bias correction (Nagel, van Baalen, Blankevoort,
  Welling, "Data-Free Quantization Through Weight Equalization and Bias Correction",
  ICCV'19, §4.2): a changed weight ``Ŵ = W + ε`` shifts the layer's mean output by
  ``ε E[x]``; subtracting that from the bias restores the mean output.

Order: with a BatchNorm after a corrected layer, correct the bias first and re-estimate
the BatchNorm afterwards (or fold the BatchNorm first,
:func:`~efficientdl.compress.fold.fold_batchnorm`).  Re-estimating first lets the
running mean absorb the shift ``ε E[x]``; the bias correction would then move the mean
away again by the same amount.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..core.tensors import compressible_tensors
from ..errors import RecipeError
from .calibration import batch_inputs, collect_statistics, is_covered

_BATCHNORM = nn.modules.batchnorm._BatchNorm


# --------------------------------------------------------------------------- BatchNorm re-estimation
class _ChannelMoments:
    """Per-channel count, mean and sum of squared deviations ``M2``, merged batch by batch in
    float64 (Chan, Golub, LeVeque 1979: no ``Σx² − n·mean²`` cancellation)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        # x: [N, C, *] (or [N, C]); channel first, every other position one value
        values = x.detach().transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
        n_b = values.shape[1]
        if n_b == 0:
            return
        mean_b = values.mean(dim=1)
        m2_b = ((values - mean_b[:, None]) ** 2).sum(dim=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (self.count * n_b / n)
        self.count = n


def _batch_size(x: Any) -> int | None:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else None


def reestimate_batchnorm(model: nn.Module, calibration: Iterable[Any], max_batches: int | None = None) -> dict:
    """Recompute the running statistics of every BatchNorm from unlabeled calibration data.

    BN re-estimation (AdaBN, Li et al. 2016; Nagel et al., "A White Paper on Neural
    Network Quantization", 2021): after pruning or weight sharing changed the weights,
    each BatchNorm's input has a new distribution, and its stored ``μ``, ``σ²`` (of the
    uncompressed network) no longer normalise it.  One pass over the calibration data
    replaces them by the statistics of the compressed network's own activations: for
    channel ``c`` with the ``n`` input values ``y_1 … y_n`` it saw over all batches (every
    sample and spatial position),

        μ_c = (1/n) Σ_i y_i,        σ²_c = 1/(n − 1) · Σ_i (y_i − μ_c)²

    (the unbiased variance, as torch stores it).  During the pass, only the BatchNorm
    modules are in training mode, so each normalises with its batch's statistics as in
    training (and downstream layers see those activations); dropout and every other
    module stay in evaluation mode, and no gradient is computed.  Each BatchNorm's
    ``momentum`` is set to ``None`` for the pass (torch's cumulative average, so
    ``num_batches_tracked`` counts the batches) and the values above — the pooled
    moments over all values, gathered by a hook in float64 — are written at the end.
    torch's cumulative average alone would store the mean of the per-batch unbiased
    variances, which differs from ``σ²_c`` by the spread of the batch means (and, for
    batches of different sizes, also the mean).

    Every BatchNorm counts: ``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and subclasses,
    with ``track_running_stats=True``; one without running statistics normalises by its
    batch also at inference and is listed as ``untracked``.  Afterwards the momentum of
    each BatchNorm and the training flag of every module are restored (also on error,
    when the old running statistics are put back as well).

    Args:
        model: the compressed model, changed in place (its running statistics only).
        calibration: an iterable of batches: tensors, or ``(x, y, …)`` tuples / lists
            whose first item is the model's input (labels are ignored).  One pass; a
            generator is fine.
        max_batches: stop after this many batches (default: all of them).

    Returns:
        ``{"layers": [BatchNorm names, in execution order], "batches": int,
        "samples": calibration samples (the inputs' first dimension summed; ``None``
        when the inputs are not tensors), "values": {name: values per channel n},
        "untracked": [names]}``.  A model without a BatchNorm to re-estimate gives
        ``layers == []`` and ``batches == 0`` (the data is not read).

    Raises:
        RecipeError: the data gave no batches, or a BatchNorm never ran on it.

    Example:
        >>> prune_post_training(model, loader, sparsity=0.5)
        >>> reestimate_batchnorm(model, loader, max_batches=16)["layers"]
        ['bn1', 'layer1.0.bn1', ...]
    """
    norms: dict[str, nn.Module] = {}
    untracked: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, _BATCHNORM):
            continue
        if module.track_running_stats and module.running_mean is not None:
            norms.setdefault(name, module)
        else:
            untracked.append(name)
    summary: dict[str, Any] = {"layers": [], "batches": 0, "samples": 0, "values": {}, "untracked": untracked}
    if not norms:
        return summary

    moments = {name: _ChannelMoments() for name in norms}
    ran: list[str] = []

    def hook(name: str, module: nn.Module, inputs: tuple) -> None:
        if name not in ran:
            ran.append(name)
        moments[name].add(inputs[0])

    modes = [(m, m.training) for m in model.modules()]
    saved = {name: (bn.momentum, bn.running_mean.detach().clone(), bn.running_var.detach().clone(),
                    None if bn.num_batches_tracked is None else bn.num_batches_tracked.detach().clone())
             for name, bn in norms.items()}
    handles = [bn.register_forward_pre_hook(lambda m, i, name=name: hook(name, m, i)) for name, bn in norms.items()]
    seen, samples, ok = 0, 0, False
    try:
        model.eval()
        for bn in norms.values():
            bn.train()
            bn.reset_running_stats()
            bn.momentum = None
        with torch.no_grad():
            for batch in calibration:
                if max_batches is not None and seen >= max_batches:
                    break
                x = batch_inputs(batch)
                model(x)
                seen += 1
                size = _batch_size(x)
                samples = None if samples is None or size is None else samples + size
        if seen == 0:
            raise RecipeError("batchnorm re-estimation: the calibration data gave no batches")
        missing = [name for name in norms if moments[name].mean is None]
        if missing:
            raise RecipeError(f"batchnorm re-estimation: {', '.join(repr(n) for n in missing)} never ran "
                              f"on the calibration data")
        with torch.no_grad():
            for name, bn in norms.items():
                m = moments[name]
                bn.running_mean.copy_(m.mean.to(bn.running_mean))
                bn.running_var.copy_((m.m2 / max(m.count - 1, 1)).to(bn.running_var))
        ok = True
    finally:
        for handle in handles:
            handle.remove()
        for name, bn in norms.items():
            momentum, mean, var, tracked = saved[name]
            bn.momentum = momentum
            if not ok:
                with torch.no_grad():
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                    if tracked is not None:
                        bn.num_batches_tracked.copy_(tracked)
        for module, training in modes:
            module.training = training
    summary.update(layers=list(ran), batches=seen, samples=samples,
                   values={name: moments[name].count for name in ran})
    return summary


# --------------------------------------------------------------------------- bias correction
def original_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{key: detached copy}`` of every weight tensor as the model uses it now: the
    ``original`` of :func:`correct_bias`, taken before compressing.

    Args:
        model: any ``nn.Module`` (keys of :func:`~efficientdl.core.tensors.compressible_tensors`).
    """
    return {t.key: t.value.detach().clone() for t in compressible_tensors(model)}


def _mean_output_shift(delta: torch.Tensor, mean: torch.Tensor, groups: int) -> torch.Tensor:
    """``(W − Ŵ) E[x]`` per output row: ``delta`` ``[rows, d_g]``, ``mean`` ``[d]`` or ``[g, d_g]``."""
    if groups == 1:
        return delta @ mean.reshape(-1)
    per = delta.shape[0] // groups
    return (delta * mean.repeat_interleave(per, dim=0)).sum(dim=1)


def correct_bias(
    model: nn.Module,
    original: Mapping[str, torch.Tensor],
    calibration: Iterable[Any],
    max_batches: int | None = None,
    keys: Sequence[str] | None = None,
) -> dict:
    """Empirical bias correction of compressed ``nn.Linear`` / ``nn.Conv2d`` layers.

    Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight
    Equalization and Bias Correction" (ICCV'19), §4.2: a layer ``y = W x + b`` whose
    weight became ``Ŵ`` (pruned, weight-shared, quantized) computes on the same inputs
    a mean output shifted by

        E[y] − E[ŷ] = E[(W − Ŵ) x] = (W − Ŵ) E[x],

    one value per output channel, and ``b ← b + (W − Ŵ) E[x]`` makes the mean output
    equal the original layer's again.  For a convolution ``x`` is an im2col patch
    (padding included, :func:`~efficientdl.compress.calibration.collect_statistics`),
    ``W`` the weight flattened to ``[C_out, C_in/g · kh · kw]``, and for ``groups = g > 1``
    the rows of group ``j`` multiply the mean patch of group ``j``; ``E[x]`` is the mean
    over every sample and output position, so the corrected mean is exact over the
    feature map.  The empirical variant estimates ``E[x]`` on calibration samples
    (the data-free variant derives it from the preceding BatchNorm).

    Layers are corrected in execution order, each on the inputs the already-corrected
    earlier layers produce: the first pass finds the order and gives the first layer's
    ``E[x]``, then one pass per further layer (``collect_statistics(model, calibration,
    keys=[key], gram=False)``), i.e. ``L`` forward passes of the whole model over the
    calibration data for ``L`` corrected layers, ``O(d)`` memory per layer.  The
    reference is the original layer on those same inputs; a difference that reaches a
    layer from upstream (the corrected means pass non-linearities) is not compensated.
    The paper's alternative — matching the activations of a full copy of the original
    network — needs that copy; here only the original weights are given.

    Only biases change: no weight, mask, codebook or quantizer is touched (a
    parametrized weight is read through the parametrization).  A layer without a bias is
    skipped (adding one would change the state dict the file and runtime expect), as is
    one whose weight did not change or whose bias is not a plain parameter.  The current
    bias is taken to be the original one: running the correction twice adds it twice.
    A tied weight is corrected under its first name only.

    Args:
        model: the compressed model, changed in place (the biases only); it runs in
            evaluation mode (BatchNorms with their running statistics).
        original: ``{key: the uncompressed weight}``, keys of
            :func:`~efficientdl.core.tensors.compressible_tensors` (see
            :func:`original_weights`).
        calibration: a re-iterable collection of batches (a list or a ``DataLoader``):
            tensors, or ``(x, y, …)`` with labels ignored.
        max_batches: calibration batches per pass (default: all).
        keys: correct only these tensors (default: every key of ``original``; those not
            covered — recurrent, attention, embedding weights — are then skipped).

    Returns:
        ``{"corrected": {key: {"correction": ‖Δb‖₂, "error_before": float,
        "error_after": float, "samples": n}}, "skipped": {key: reason}, "passes": int}``
        in execution order.  ``error_*`` is the mean over output channels of
        ``|E[y_c] − E[ŷ_c]|``, the mean output error against the original layer on the
        calibration inputs, before and after the correction (after: what the bias's
        rounding to its dtype leaves); ``samples`` the sample vectors ``x`` averaged;
        the reasons are ``"no bias"``, ``"unchanged"``, ``"not covered"`` and
        ``"bias not a plain parameter"``.

    Raises:
        RecipeError: a key unknown to the model or without an original value, an
            explicitly named layer that is not covered, an original of another shape, a
            one-pass iterator, no calibration data, or a layer that never runs on it.

    Example:
        >>> original = original_weights(model)
        >>> prune_post_training(model, loader, sparsity=0.5, method="wanda")
        >>> correct_bias(model, original, loader)["corrected"]["fc1"]["error_after"]
        0.0
    """
    if iter(calibration) is calibration:
        raise RecipeError("bias correction: the calibration data is read once per layer; "
                          "give a list or a DataLoader, not a one-pass iterator")
    by_key = {t.key: t for t in compressible_tensors(model)}
    names = list(original) if keys is None else list(keys)
    skipped: dict[str, str] = {}
    candidates = {}
    for key in names:
        t = by_key.get(key)
        if t is None:
            raise RecipeError(f"bias correction: no weight tensor '{key}' (known: {', '.join(by_key) or 'none'})")
        if key not in original:
            raise RecipeError(f"bias correction: no original value of '{key}' given")
        if not is_covered(t, model):
            if keys is not None:
                raise RecipeError(f"bias correction: '{key}' ({type(t.module).__name__}) is not covered: "
                                  "nn.Linear and nn.Conv2d weights only")
            skipped[key] = "not covered"
            continue
        value, before = t.value.detach(), original[key]
        if tuple(before.shape) != tuple(value.shape):
            raise RecipeError(f"bias correction: the original '{key}' has shape {tuple(before.shape)}, "
                              f"the model's {tuple(value.shape)}")
        if torch.equal(before.to(device=value.device, dtype=value.dtype), value):
            skipped[key] = "unchanged"
        elif getattr(t.module, "bias", None) is None:
            skipped[key] = "no bias"
        elif not isinstance(t.module._parameters.get("bias"), torch.Tensor):
            skipped[key] = "bias not a plain parameter"
        else:
            candidates[key] = t
    result: dict[str, Any] = {"corrected": {}, "skipped": skipped, "passes": 0}
    if not candidates:
        return result

    first = collect_statistics(model, calibration, keys=list(candidates), max_batches=max_batches, gram=False)
    result["passes"] = 1
    corrected_any = False
    for key in list(first):
        t = candidates[key]
        if corrected_any:   # an earlier layer's bias changed: this layer's inputs did too
            stats = collect_statistics(model, calibration, keys=[key], max_batches=max_batches, gram=False)[key]
            result["passes"] += 1
        else:
            stats = first[key]
        first[key] = None
        value = t.value.detach()
        rows = value.shape[0]
        delta = (original[key].to(device=value.device, dtype=torch.float64)
                 - value.to(torch.float64)).reshape(rows, -1)
        shift = _mean_output_shift(delta, stats.mean.to(value.device), stats.groups)
        bias = t.module.bias
        with torch.no_grad():
            old = bias.detach().to(torch.float64).clone()
            bias.add_(shift.to(bias.dtype))
            applied = bias.detach().to(torch.float64) - old
        result["corrected"][key] = {
            "correction": float(applied.norm()),
            "error_before": float(shift.abs().mean()),
            "error_after": float((shift - applied).abs().mean()),
            "samples": stats.count,
        }
        corrected_any = True
    return result
