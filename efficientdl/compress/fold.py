"""Fold batch normalisation into the preceding convolution or fully connected layer.

At inference a BatchNorm layer is an affine map per channel with its running statistics:

    BN(y) = γ · (y − μ) / √(σ² + ε) + β.

Following a layer ``y = W x + b``, it folds exactly into that layer (Ioffe & Szegedy 2015;
the standard step before quantized or compressed deployment, as in Jacob et al. 2018):

    s = γ / √(σ² + ε),    W' = s ⊙ W  (row / output channel c scaled by s_c),
    b' = s ⊙ (b − μ) + β,

after which the BatchNorm is replaced by ``nn.Identity``.  The folded model computes the
same function in eval mode, has one layer fewer to run, and its weights — which now
carry the BN scale — are what pruning and quantization then see.

Which pairs fold is read from the model's graph: :func:`torch.fx.symbolic_trace` with
a tracer (:class:`LeafTracer`) that keeps every ``nn.Conv1d/2d/3d`` and ``nn.Linear``
— subclasses with their own ``forward`` included, such as "same"-padding convolutions
— and every BatchNorm as one call.  A BatchNorm folds when its input is the output of
such a layer and nothing else uses that output (a residual block with BatchNorm as
attributes, a custom module, any nesting), each of the two is called once, no other
node reads their tensors, and the layer's weight is not shared with another module.
A subclass whose ``forward`` is not the base class's must also pass a probe: scaling
its weight and bias per output channel by ``s`` and adding ``t`` to the bias must give
``s ⊙ y + t`` (so a weight-standardising convolution, whose output the fold would
change, is left alone).  When the model cannot be traced (data-dependent control flow,
for instance) only adjacent pairs inside an ``nn.Sequential`` fold, as before tracing
was used; the result says which rule ran.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ..core.parametrize import fold_parametrization, replace_module
from ..core.state import only_weight_quantizers
from .transforms import record_transform, register_transform

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fold_pair(model: nn.Module, layer_name: str, norm_name: str, use_statistics: bool = True) -> None:
    layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
    fold_parametrization(layer, "weight")   # a quantizer only (see _can_fold): scaled weights leave its grid
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


class LeafTracer(fx.Tracer):
    """An fx tracer that keeps conv / linear layers (any subclass) and BatchNorms as leaves.

    torch's default keeps only modules defined inside ``torch.nn``; a user's subclass of
    ``nn.Conv2d`` would be traced into and its call lost as a unit.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _FOLDABLE + _NORMS) or super().is_leaf_module(m, module_qualified_name)


def _base_forward(layer: nn.Module):
    return next(base.forward for base in _FOLDABLE if isinstance(layer, base))


@torch.no_grad()
def _affine_per_channel(layer: nn.Module) -> bool:
    """Whether ``layer(x; s ⊙ W, s ⊙ b + t) = s ⊙ layer(x; W, b) + t`` per output channel,
    checked on a random input: the property the fold relies on.  Plain conv / linear
    classes have it by construction; a subclass with its own ``forward`` is probed."""
    if type(layer).forward is _base_forward(layer):
        return True
    try:
        probe = copy.deepcopy(layer).float().cpu().eval()
        fold_parametrization(probe, "weight")
        channels = probe.weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        if isinstance(probe, nn.Linear):
            x, axis = torch.randn(2, probe.in_features, generator=generator), -1
        else:
            spatial = [(k - 1) * d + 3 for k, d in zip(probe.kernel_size, probe.dilation)]
            x, axis = torch.randn(2, probe.in_channels, *spatial, generator=generator), 1
        if probe.bias is None:
            probe.bias = nn.Parameter(torch.zeros(channels))
        y = probe(x)
        s = torch.rand(channels, generator=generator) + 0.5
        t = torch.randn(channels, generator=generator)
        shape = [1] * y.dim()
        shape[axis] = channels
        probe.weight.mul_(s.reshape(-1, *([1] * (probe.weight.dim() - 1))))
        probe.bias.copy_(s * probe.bias + t)
        return bool(torch.allclose(probe(x), s.reshape(shape) * y + t.reshape(shape), rtol=1e-4, atol=1e-4))
    except Exception:  # noqa: BLE001 — a forward that refuses the probe is not foldable
        return False


def _can_fold(layer: nn.Module, norm: nn.Module) -> bool:
    """The per-module conditions of both rules: a conv / fc layer holding plain weights
    (or a weight quantizer's grid only), a BatchNorm with running statistics over its
    output channels."""
    return isinstance(norm, _NORMS) and isinstance(layer, _FOLDABLE) and only_weight_quantizers(layer) \
        and norm.track_running_stats and norm.running_mean is not None \
        and norm.num_features == layer.weight.shape[0]


def _traced_pairs(model: nn.Module, graph: fx.Graph) -> list[tuple[str, str]]:
    """The foldable ``(layer, norm)`` pairs of a traced graph, in execution order."""
    calls: dict[str, int] = {}
    read: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            read.add(node.target)
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1

    def untouched(name: str) -> bool:            # called once, none of its tensors read elsewhere
        return calls.get(name) == 1 and not any(r == name or r.startswith(name + ".") for r in read)

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        layer_name, norm_name = source.target, node.target
        layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
        if _can_fold(layer, norm) and untouched(layer_name) and untouched(norm_name) \
                and all(counts[id(p)] == 1 for p in layer.parameters()) and _affine_per_channel(layer):
            pairs.append((layer_name, norm_name))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The fallback rule: adjacent ``(layer, norm)`` children of every ``nn.Sequential``."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if _can_fold(a, b):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def foldable_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], list[str], bool]:
    """Find the BatchNorms that fold, without changing the model.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``(pairs, left, traced)``: the ``(layer name, norm name)`` pairs that fold, in
        execution order (registration order for the fallback); the names of the other
        BatchNorms; whether the model's graph was traced (``False``: the ``nn.Sequential``
        rule ran because ``torch.fx`` could not trace the model).
    """
    try:
        graph = LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 — fx raises TraceError, TypeError, … on untraceable forwards
        pairs, traced = _sequential_pairs(model), False
    else:
        pairs, traced = _traced_pairs(model, graph), True
    folded = {norm for _, norm in pairs}
    left = [n for n, m in model.named_modules() if isinstance(m, _NORMS) and n not in folded]
    return pairs, left, traced


def fold_batchnorm(model: nn.Module) -> dict:
    """Fold every BatchNorm whose input is the output of a conv / fc layer with no other user.

    ``s = γ / √(σ² + ε)``, ``W' = s ⊙ W``, ``b' = s ⊙ (b − μ) + β``, the BatchNorm becomes
    ``nn.Identity`` (see the module docstring for which pairs qualify).  The change is
    recorded as the ``fold_bn`` transform, so a file of a registry model rebuilds it.

    Args:
        model: any model (changed in place); fold before pruning or quantizing, on a
            trained model (the running statistics are used).

    Returns:
        ``{"folded": [[layer, norm], ...], "left": [norm names not folded], "traced": bool}``;
        ``traced`` is ``False`` when ``torch.fx`` could not trace the model and only
        adjacent pairs inside an ``nn.Sequential`` were considered.

    Example:
        >>> block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        >>> fold_batchnorm(block)
        {'folded': [['0', '1']], 'left': [], 'traced': True}
    """
    pairs, left, traced = foldable_pairs(model)
    for layer_name, norm_name in pairs:
        _fold_pair(model, layer_name, norm_name)
    if pairs:
        record_transform(model, "fold_bn", pairs=[list(p) for p in pairs])
    return {"folded": [list(p) for p in pairs], "left": left, "traced": traced}


@register_transform("fold_bn")
def _replay_fold_bn(model: nn.Module, pairs: list) -> None:
    """Rebuild the folded structure (bias added, BatchNorm → Identity); weights come from the file."""
    for layer_name, norm_name in pairs:
        if not isinstance(model.get_submodule(norm_name), _NORMS) or \
                not isinstance(model.get_submodule(layer_name), _FOLDABLE):
            raise ValueError(f"'{layer_name}' → '{norm_name}' is not a layer followed by a BatchNorm")
        _fold_pair(model, layer_name, norm_name, use_statistics=False)
    record_transform(model, "fold_bn", pairs=pairs)
