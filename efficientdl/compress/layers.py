"""Which parameters the compression stages act on, and per-layer settings.

Deep Compression prunes and weight-shares the weight matrices of fully connected
and convolutional layers; biases and everything else stay dense.  A per-layer
setting (sparsity, bits, index bits) may be given as one number for every layer or
as a mapping whose keys are layer names (``"fc1"``), module type names
(``"Linear"``, ``"Conv2d"``) or ``"default"``; the most specific key wins.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping

from torch import nn
from torch.nn.utils import parametrize

from ..errors import RecipeError

COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def compressible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every layer whose ``weight`` the stages compress.

    Args:
        model: any ``nn.Module``; its ``nn.Linear`` and ``nn.Conv2d`` children are
            selected, everything else is left dense.

    Returns:
        An iterator of qualified module names and modules, in registration order.
    """
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSIBLE_TYPES):
            yield name, module


def layer_type(module: nn.Module) -> str:
    """The module's class name, seen through ``torch.nn.utils.parametrize``'s generated subclass."""
    return parametrize.type_before_parametrizations(module).__name__


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


def layer_setting(spec: Any, name: str, module: nn.Module, what: str) -> Any:
    """Resolve a per-layer setting for one layer.

    Args:
        spec: a scalar applied to every layer, or a mapping keyed by layer name,
            module type name or ``"default"``.
        name: qualified module name.
        module: the module.
        what: name of the setting, used in error messages.

    Returns:
        The setting for this layer, or ``None`` when the mapping does not cover it
        (the layer is then skipped by the stage).
    """
    if not isinstance(spec, Mapping):
        return spec
    for key in (name, layer_type(module), "default"):
        if key in spec:
            return spec[key]
    return None


def check_spec_keys(spec: Any, model: nn.Module, what: str) -> None:
    """Raise :class:`RecipeError` when a mapping names a layer or type that does not exist.

    Args:
        spec: the per-layer setting (scalar or mapping).
        model: the model the setting is applied to.
        what: name of the setting, used in the message.
    """
    if not isinstance(spec, Mapping):
        return
    names = {n for n, _ in compressible_layers(model)}
    types = {layer_type(m) for _, m in compressible_layers(model)}
    for key in spec:
        if key != "default" and key not in names and key not in types:
            known = ", ".join(sorted(names | types))
            raise RecipeError(f"{what}: '{key}' matches no prunable layer (known: {known})")


def select_layers(model: nn.Module, kind: type[nn.Module], layers: list[str] | None,
                  what: str) -> list[tuple[str, nn.Module]]:
    """The layers of exact type ``kind`` a structural method acts on.

    Args:
        model: the model.
        kind: the module class (subclasses and parametrized copies are not matched).
        layers: only these qualified names (default: every such layer).
        what: name of the method, used in error messages.

    Returns:
        ``(name, module)`` pairs in registration order.

    Raises:
        RecipeError: ``layers`` names something that is not a ``kind`` layer of the model.
    """
    found = [(name, m) for name, m in model.named_modules() if name and type(m) is kind]
    if layers is not None:
        known = {name for name, _ in found}
        missing = [name for name in layers if name not in known]
        if missing:
            raise RecipeError(f"{what}: {', '.join(repr(n) for n in missing)} is not an nn.{kind.__name__} layer "
                              f"of the model (known: {', '.join(sorted(known)) or 'none'})")
        found = [(name, m) for name, m in found if name in layers]
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (a qualified name, e.g. ``"features.3"``)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
