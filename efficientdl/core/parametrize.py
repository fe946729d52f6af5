"""Folding what the compression methods add to a tensor, and swapping modules.

Everything a method adds to a weight — a pruning mask, a codebook and its
assignments, a quantizer's grid, ternary scales — is a
``torch.nn.utils.parametrize`` parametrization on the module that owns the tensor.
This module is the one place that turns them back into plain parameters:
:func:`fold_parametrization` (one tensor), :func:`fold_parametrizations` (a module),
:func:`plain_copy` (a model) and :func:`plain_state_dict` (a state dict), and the one
module-replace function, :func:`replace_module`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize


def fold_parametrization(module: nn.Module, attr: str) -> None:
    """Fold the parametrizations of one tensor into a plain parameter, keeping the module's others.

    Needed where one module holds several compressible tensors (a recurrent layer's
    gate matrices): folding all of them would drop a sibling's mask or codebook.

    Args:
        module: the module.
        attr: the parametrized tensor to fold (nothing happens when it is plain).
    """
    if not parametrize.is_parametrized(module, attr):
        return
    others = {name: (list(module.parametrizations[name]), module.parametrizations[name].original.detach().clone(),
                     module.parametrizations[name].original.requires_grad)
              for name in module.parametrizations.keys() if name != attr}
    fold_parametrizations(module)
    for name, (chain, original, requires_grad) in others.items():
        for p in chain:
            parametrize.register_parametrization(module, name, p, unsafe=True)
        leaf = module.parametrizations[name].original
        with torch.no_grad():
            leaf.copy_(original)
        leaf.requires_grad_(requires_grad)


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization folded into a plain parameter.

    ``parametrize.remove_parametrizations`` edits the generated class, which a deep
    copy shares with the original; here the copy's modules get their original class
    back instead, so the source model is left untouched.

    Args:
        model: any module, parametrized or not.

    Returns:
        An independent model whose parameters hold the effective (parametrized) values.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        fold_parametrizations(module)
    return plain


def fold_parametrizations(module: nn.Module) -> None:
    """Replace every parametrized tensor of ``module`` by a plain parameter holding its value.

    Unlike ``parametrize.remove_parametrizations``, this never edits the generated
    class, which deep copies of a parametrized model share.

    Args:
        module: the module (its children are not touched).
    """
    if not parametrize.is_parametrized(module):
        return
    values = {name: getattr(module, name).detach().clone() for name in module.parametrizations.keys()}
    module.__class__ = parametrize.type_before_parametrizations(module)
    del module._modules["parametrizations"]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value))



def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with every parametrization folded into a plain tensor.

    A module parametrized with ``torch.nn.utils.parametrize`` stores
    ``<module>.parametrizations.<name>.original`` (plus any buffers of the
    parametrization modules, e.g. masks); the effective tensor is
    ``getattr(module, name)``.  This function replaces all those entries by the
    effective tensor under the plain key ``<module>.<name>`` (e.g. ``fc1.weight``),
    at the position of the first replaced entry, so the result loads into the same
    architecture without parametrizations.

    Args:
        model: any module.

    Returns:
        Ordered mapping of names to detached, contiguous CPU tensors (copies).
    """
    owners = [
        (f"{prefix}.parametrizations." if prefix else "parametrizations.", f"{prefix}." if prefix else "", module)
        for prefix, module in model.named_modules()
        if parametrize.is_parametrized(module)
    ]
    plain: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            for head, plain_prefix, module in owners:
                tensor_name = key[len(head):].split(".", 1)[0] if key.startswith(head) else None
                if tensor_name is not None and tensor_name in module.parametrizations:
                    key = plain_prefix + tensor_name
                    value = None if key in plain else getattr(module, tensor_name)
                    break
            if value is not None:
                plain[key] = value.detach().to("cpu").clone().contiguous()
    return plain


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (a qualified name, e.g. ``"features.3"``)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
