"""Which parameters the compression methods act on, and per-layer settings.

Deep Compression prunes and weight-shares weight matrices; biases, normalisation
layers and other 1-D tensors stay dense.  :func:`compressible_tensors` finds every
weight matrix of any model (fully connected, convolutional, recurrent gates,
embeddings, attention, custom parameters); :func:`compressible_layers` the
``Linear``/``Conv2d`` layers the layer-level methods act on.  A per-layer setting
(sparsity, bits, index bits) may be given as one number for every layer or as a
mapping whose keys are layer names (``"fc1"``, ``"lstm.weight_hh_l0"``), name
patterns (globs such as ``"features.*.squeeze"`` or regular expressions
``"re:fc[12]"``), module type names (``"Linear"``, ``"LSTM"``) or ``"default"``; the
most specific key wins.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import RecipeError
from .parametrize import fold_parametrization

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


#: normalisation layers keep their (1-D) scales and shifts dense
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                           nn.LocalResponseNorm)


@dataclass(frozen=True)
class WeightTensor:
    """One weight tensor the pruning, weight-sharing and coding stages act on.

    Attributes:
        key: the name settings and reports use: the module's name when the tensor is
            its ``weight`` (``"fc1"``, ``"features.3.expand3x3"``), else
            ``"<module>.<parameter>"`` (``"lstm.weight_hh_l0"``, ``"attn.in_proj_weight"``).
        module_name: qualified name of the module that registers the parameter.
        module: that module.
        attr: the parameter's name on the module.
    """

    key: str
    module_name: str
    module: nn.Module
    attr: str

    @property
    def param_name(self) -> str:
        """The parameter's state-dict name (``"lstm.weight_hh_l0"``)."""
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def value(self) -> torch.Tensor:
        """The tensor as the model uses it (through any parametrization)."""
        return getattr(self.module, self.attr)


def run_with_layer_hooks(model: nn.Module, example: torch.Tensor, hook) -> None:
    """One forward pass of ``model`` (evaluation mode, no gradient) on the first sample of
    ``example``, with ``hook(name, module, inputs, output)`` called on every layer of
    :func:`compressible_layers`; the hooks are removed afterwards, also on error.

    Args:
        model: the network; it is left in evaluation mode.
        example: a batch of inputs; only ``example[:1]`` runs.
        hook: called once per compressible layer the pass reaches.
    """
    handles = [module.register_forward_hook(lambda m, i, o, name=name: hook(name, m, i, o))
               for name, module in compressible_layers(model)]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for handle in handles:
            handle.remove()


def _own_parameters(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, leaf tensor)`` of the parameters ``module`` registers itself, parametrized ones included."""
    own = []
    if parametrize.is_parametrized(module):
        # a parametrization over several stored tensors (torch's weight_norm: original0,
        # original1) is not one weight matrix: it is left dense
        own += [(name, module.parametrizations[name].original) for name in module.parametrizations.keys()
                if hasattr(module.parametrizations[name], "original")]
    own += [(name, p) for name, p in module._parameters.items() if p is not None]
    return own


def _model_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` without the internals of parametrizations (their ``original`` is the layer's)."""
    for name, module in model.named_modules():
        if "parametrizations" not in name.split("."):
            yield name, module


def compressible_tensors(model: nn.Module) -> Iterator[WeightTensor]:
    """Yield every weight tensor of ``model`` that pruning, weight sharing and the file compress.

    A tensor qualifies when it is a floating-point parameter with at least two
    dimensions — the weights of fully connected, convolutional (any dimension, grouped
    or depthwise), recurrent (every gate matrix ``weight_ih_l*``, ``weight_hh_l*``),
    embedding and attention layers, and matrices registered directly on a custom
    module.  Biases, normalisation layers (:data:`NORM_TYPES`) and other 1-D tensors
    stay dense.  A parameter shared by several modules (tied weights) is yielded once,
    under its first name.

    Args:
        model: any ``nn.Module``.

    Returns:
        An iterator of :class:`WeightTensor`, in module registration order.
    """
    seen: set[int] = set()
    for module_name, module in _model_modules(model):
        if isinstance(module, NORM_TYPES):
            continue
        for attr, leaf in _own_parameters(module):
            if id(leaf) in seen or leaf.dim() < 2 or not leaf.is_floating_point():
                continue
            seen.add(id(leaf))
            key = module_name if attr == "weight" and module_name else (
                f"{module_name}.{attr}" if module_name else attr)
            yield WeightTensor(key, module_name, module, attr)


def _ties(model: nn.Module) -> Iterator[tuple[tuple[str, nn.Module, str], tuple[str, nn.Module, str]]]:
    """``((first name, module, attr), (other name, module, attr))`` for every further name of a parameter."""
    first: dict[int, tuple[str, nn.Module, str]] = {}
    for module_name, module in _model_modules(model):
        for attr, leaf in _own_parameters(module):
            here = (f"{module_name}.{attr}" if module_name else attr, module, attr)
            if id(leaf) in first:
                yield first[id(leaf)], here
            else:
                first[id(leaf)] = here


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """``{later name: first name}`` for parameters registered under several names (tied weights)."""
    return {other[0]: first[0] for first, other in _ties(model)}


def tied_pairs(model: nn.Module) -> list[tuple[tuple[nn.Module, str], tuple[nn.Module, str]]]:
    """``[((first module, attr), (other module, attr)), ...]`` for every tied parameter name."""
    return [((first[1], first[2]), (other[1], other[2])) for first, other in _ties(model)]


def retie(pairs: list[tuple[tuple[nn.Module, str], tuple[nn.Module, str]]]) -> None:
    """Make each tied name compute exactly what its first name computes, after a method changed it.

    Compression methods act on the first name of a tied parameter only
    (:func:`compressible_tensors`).  Afterwards every other name gets the same
    parametrizations (the same objects: masks, codebooks, quantizers) over the same
    stored parameter, so the values, the gradients and the file stay tied.

    Args:
        pairs: :func:`tied_pairs` of the model, taken before the method ran.
    """
    for (m1, a1), (m2, a2) in pairs:
        if parametrize.is_parametrized(m2, a2):
            fold_parametrization(m2, a2)
        if parametrize.is_parametrized(m1, a1):
            for p in m1.parametrizations[a1]:
                parametrize.register_parametrization(m2, a2, p, unsafe=True)
            m2.parametrizations[a2].original = m1.parametrizations[a1].original
        else:
            delattr(m2, a2)
            m2.register_parameter(a2, m1._parameters[a1])


def tensor_setting(spec: Any, tensor: WeightTensor, what: str) -> Any:
    """Resolve a per-tensor setting: by tensor key or module name, pattern, module type, then ``"default"``.

    Args:
        spec: a scalar for every tensor, or a mapping (see :func:`layer_setting`).
        tensor: the tensor.
        what: name of the setting, used in error messages.

    Returns:
        The setting, or ``None`` when the mapping does not cover the tensor.
    """
    if not isinstance(spec, Mapping):
        return spec
    return _lookup(spec, (tensor.key, tensor.module_name), layer_type(tensor.module))


def layer_type(module: nn.Module) -> str:
    """The module's class name, seen through ``torch.nn.utils.parametrize``'s generated subclass."""
    return parametrize.type_before_parametrizations(module).__name__



def is_pattern(key: str) -> bool:
    """A settings key that selects by pattern: ``re:REGEX`` or a glob with ``*``, ``?`` or ``[``."""
    return key.startswith("re:") or any(c in key for c in "*?[")


def _pattern_matches(key: str, names: tuple[str, ...]) -> bool:
    if key.startswith("re:"):
        try:
            regex = re.compile(key[3:])
        except re.error as e:
            raise RecipeError(f"'{key}': not a valid regular expression ({e})") from None
        return any(regex.fullmatch(n) for n in names if n)
    return any(fnmatch.fnmatchcase(n, key) for n in names if n)


def _lookup(spec: Mapping, names: tuple[str, ...], type_name: str) -> Any:
    """Exact name, then the first matching pattern (in the mapping's order), then type, then default."""
    for key in names:
        if key in spec:
            return spec[key]
    for key, value in spec.items():
        if isinstance(key, str) and is_pattern(key) and _pattern_matches(key, names):
            return value
    for key in (type_name, "default"):
        if key in spec:
            return spec[key]
    return None


def layer_setting(spec: Any, name: str, module: nn.Module, what: str) -> Any:
    """Resolve a per-layer setting for one layer.

    Args:
        spec: a scalar applied to every layer, or a mapping whose keys are a layer name
            (``"fc1"``), a name pattern — a glob (``"features.*.expand3x3"``) or a regular
            expression (``"re:fc[12]"``), matched against the whole name — a module type
            name (``"Conv2d"``) or ``"default"``.  The most specific key wins: exact name,
            then the first matching pattern, then type, then default.
        name: qualified module name.
        module: the module.
        what: name of the setting, used in error messages.

    Returns:
        The setting for this layer, or ``None`` when the mapping does not cover it
        (the layer is then skipped by the stage).
    """
    if not isinstance(spec, Mapping):
        return spec
    return _lookup(spec, (name,), layer_type(module))


def check_spec_keys(spec: Any, model: nn.Module, what: str) -> None:
    """Raise :class:`RecipeError` when a mapping names a layer or type that does not exist.

    Args:
        spec: the per-layer setting (scalar or mapping).
        model: the model the setting is applied to.
        what: name of the setting, used in the message.
    """
    if not isinstance(spec, Mapping):
        return
    tensors = list(compressible_tensors(model))
    names = {t.key for t in tensors} | {t.module_name for t in tensors if t.module_name}
    types = {layer_type(t.module) for t in tensors}
    for key in spec:
        if not isinstance(key, str):
            raise RecipeError(f"{what}: key {key!r} is not a layer name, pattern or type")
        if key == "default" or key in names or key in types:
            continue
        if is_pattern(key):
            if not _pattern_matches(key, tuple(names)):
                raise RecipeError(f"{what}: pattern '{key}' matches no prunable layer")
            continue
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
