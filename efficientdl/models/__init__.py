"""Model registry: build networks by name so that files can record and rebuild them.

A model constructor (class or function) is registered with :func:`register`; it
must accept ``num_classes`` and ``in_channels`` keywords.  Models carry
``edl_arch = {"name": ..., "kwargs": {...}}``, the registry name and the keyword
arguments that rebuild them with :func:`create`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from efficientdl.errors import ModelError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model constructor under ``name``.

    Args:
        name: the registry name (what ``create`` and ``edl_arch["name"]`` use).

    Returns:
        A decorator that registers its argument and returns it unchanged.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not constructor:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = constructor
        return constructor

    return decorator


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, in_channels: int = 1, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name, e.g. ``"lenet300"``, ``"lenet5"`` or ``"lstm"``.
        num_classes: number of outputs.
        in_channels: input channels.
        **kwargs: further constructor arguments (e.g. ``input_size``).

    Returns:
        The freshly initialised model, with ``edl_arch`` naming ``name`` and every
        keyword needed to rebuild it.

    Raises:
        ModelError: unknown name or arguments the constructor refuses.
    """
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r} (expected one of {', '.join(available())})")
    try:
        model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as error:
        raise ModelError(f"model {name}: bad arguments ({error})") from None
    recorded = getattr(model, "edl_arch", None)
    arch_kwargs = dict(recorded["kwargs"]) if isinstance(recorded, dict) and "kwargs" in recorded else {
        "num_classes": num_classes, "in_channels": in_channels, **kwargs,
    }
    model.edl_arch = {"name": name, "kwargs": arch_kwargs}
    return model


def rebuild(arch: Any, where: str = "architecture") -> nn.Module:
    """Build the model an ``edl_arch`` record describes: the registry model, then its
    recorded structural transforms (:func:`efficientdl.compress.transforms.apply_transforms`).

    Args:
        arch: ``{"name": ..., "kwargs": {...}, "transforms": [...]}`` as stored in a file.
        where: the file named in error messages.

    Returns:
        The model, freshly initialised, whose parameter names and shapes fit the record.

    Raises:
        ModelError: no valid record, an unknown name, or transforms that do not apply.
    """
    from ..compress.transforms import apply_transforms

    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ModelError(f"{where}: no registry architecture is recorded; pass the model to load into")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"{where}: architecture arguments are malformed")
    model = create(arch["name"], **kwargs)
    return apply_transforms(model, arch.get("transforms"), where)


from efficientdl.models.lenet import LeNet5, LeNet300  # noqa: E402  (registry must exist first)
from efficientdl.models.mobilenetv2 import MobileNetV2  # noqa: E402
from efficientdl.models.resnet import ResNet18  # noqa: E402
from efficientdl.models.resnet import ResNet50  # noqa: E402
from efficientdl.models.rnn import LSTMClassifier  # noqa: E402
from efficientdl.models.squeezenet import SqueezeNet  # noqa: E402
from efficientdl.models.vit import VisionTransformer  # noqa: E402

register("lenet300")(LeNet300)
register("lenet5")(LeNet5)
register("squeezenet")(SqueezeNet)
register("lstm")(LSTMClassifier)
register("resnet18")(ResNet18)
register("resnet50")(ResNet50)
register("mobilenetv2")(MobileNetV2)
register("vit")(VisionTransformer)

__all__ = ["create", "available", "rebuild", "register", "LeNet300", "LeNet5", "LSTMClassifier", "ResNet18",
           "MobileNetV2", "VisionTransformer"]
