"""Fold batch normalisation into the preceding convolution or fully connected layer.

At inference a BatchNorm layer is an affine map per channel with its running statistics:

    BN(y) = γ · (y − μ) / √(σ² + ε) + β.

Following a layer ``y = W x + b``, it folds exactly into that layer (Ioffe & Szegedy 2015;
the standard step before quantized or compressed deployment, as in Jacob et al. 2018):

    s = γ / √(σ² + ε),    W' = s ⊙ W  (row / output channel c scaled by s_c),
    b' = s ⊙ (b − μ) + β,

after which the BatchNorm is replaced by ``nn.Identity``.  The folded model computes the
same function in eval mode, has one layer fewer to run, and its weights — which now
carry the BN scale — are what pruning and quantization then see.  Only adjacent pairs
inside an ``nn.Sequential`` are folded (where adjacency is execution order); every other
BatchNorm is left as it is and listed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.parametrize import fold_parametrization, replace_module
from ..core.state import only_weight_quantizers
from .transforms import record_transform, register_transform

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs(model: nn.Module) -> tuple[list[tuple[str, str]], list[str]]:
    """``(foldable (layer, norm) name pairs, BatchNorm names that cannot be folded)``."""
    pairs, seen = [], set()
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if isinstance(b, _NORMS) and isinstance(a, _FOLDABLE) and only_weight_quantizers(a) \
                    and b.track_running_stats and b.running_mean is not None \
                    and b.num_features == a.weight.shape[0]:
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + a_name, prefix + b_name))
                seen.add(prefix + b_name)
    unfolded = [n for n, m in model.named_modules() if isinstance(m, _NORMS) and n not in seen]
    return pairs, unfolded


def _fold_pair(model: nn.Module, layer_name: str, norm_name: str, use_statistics: bool = True) -> None:
    layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
    fold_parametrization(layer, "weight")   # a quantizer only (see _pairs): scaled weights leave its grid
    channels = layer.weight.shape[0]
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(channels, dtype=layer.weight.dtype, device=layer.weight.device))
    if use_statistics:
        with torch.no_grad():
            scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / torch.sqrt(
                norm.running_var + norm.eps)
            shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
            layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
            layer.bias.copy_(scale * (layer.bias - norm.running_mean) + shift)
    replace_module(model, norm_name, nn.Identity())


def fold_batchnorm(model: nn.Module) -> dict[str, list]:
    """Fold every BatchNorm that directly follows a conv / fc layer in an ``nn.Sequential``.

    Args:
        model: any model (changed in place); fold before pruning or quantizing, on a
            trained model (the running statistics are used).

    Returns:
        ``{"folded": [[layer, norm], ...], "left": [norm names not folded]}``.
    """
    pairs, unfolded = _pairs(model)
    for layer_name, norm_name in pairs:
        _fold_pair(model, layer_name, norm_name)
    if pairs:
        record_transform(model, "fold_bn", pairs=[list(p) for p in pairs])
    return {"folded": [list(p) for p in pairs], "left": unfolded}


@register_transform("fold_bn")
def _replay_fold_bn(model: nn.Module, pairs: list) -> None:
    """Rebuild the folded structure (bias added, BatchNorm → Identity); weights come from the file."""
    for layer_name, norm_name in pairs:
        if not isinstance(model.get_submodule(norm_name), _NORMS) or \
                not isinstance(model.get_submodule(layer_name), _FOLDABLE):
            raise ValueError(f"'{layer_name}' → '{norm_name}' is not a layer followed by a BatchNorm")
        _fold_pair(model, layer_name, norm_name, use_statistics=False)
    record_transform(model, "fold_bn", pairs=pairs)
