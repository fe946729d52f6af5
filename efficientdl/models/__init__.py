"""Model registry: build networks by name so that files can record and rebuild them.

A model constructor (class or function) is registered with :func:`register`; it
must accept ``num_classes`` and ``in_channels`` keywords.  Models carry
``edl_arch = {"name": ..., "kwargs": {...}}``, the registry name and the keyword
arguments that rebuild them with :func:`create`.

Your own network is named by an import path ``MODULE:CALLABLE`` instead
(:mod:`efficientdl.models.user`); it carries ``edl_arch = {"import": ..., "kwargs": {...}}``.
:func:`build` takes either form; :func:`rebuild` imports recorded user code only when
told to (``trust_model_code``) or when the caller names the model to build.
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


def build(model: str, num_classes: int | None = None, in_channels: int | None = None,
          kwargs: dict[str, Any] | None = None, input_size: int | None = None) -> nn.Module:
    """Build a registry model by name or your own by import path ``MODULE:CALLABLE``.

    The data's ``num_classes``, ``in_channels`` and ``input_size`` are passed when the
    constructor names them as parameters and ``kwargs`` does not give them (a registry
    model always gets the first two, default 10 and 1).

    Args:
        model: a registry name (``"lenet5"``) or an import path (``"mypkg.nets:build"``).
        num_classes: classes of the data.
        in_channels: input channels of the data.
        kwargs: further keyword arguments of the constructor.
        input_size: input height = width, when the images are square.

    Returns:
        The freshly initialised model, its ``edl_arch`` recording how to build it again.

    Raises:
        ModelError: an unknown name, a path that does not import, a constructor that refuses
            its arguments or (user code) raises or returns no ``nn.Module``.
    """
    from .user import accepted_keywords, build_user_model, is_import_path

    kwargs = dict(kwargs or {})
    if is_import_path(model):
        return build_user_model(model, kwargs, num_classes=num_classes, in_channels=in_channels,
                                input_size=input_size)
    if model in _REGISTRY and input_size is not None and "input_size" not in kwargs \
            and "input_size" in accepted_keywords(_REGISTRY[model], ("input_size",)):
        kwargs["input_size"] = input_size
    kwargs.setdefault("num_classes", 10 if num_classes is None else num_classes)
    kwargs.setdefault("in_channels", 1 if in_channels is None else in_channels)
    return create(model, **kwargs)


def rebuild(arch: Any, where: str = "architecture", trust_model_code: bool = False, model: str | None = None,
            model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model an ``edl_arch`` record describes: the registry model (or your own, see
    below), then its recorded structural transforms
    (:func:`efficientdl.compress.transforms.apply_transforms`).

    A record ``{"import": "MODULE:CALLABLE", "kwargs": ...}`` names user code: it is imported
    only with ``trust_model_code`` or when ``model`` names what to build instead — loading a
    file never imports code on its own.

    Args:
        arch: ``{"name" | "import": ..., "kwargs": {...}, "transforms": [...]}`` as stored in a
            file, or ``None`` (nothing recorded: ``model`` must be given).
        where: the file named in error messages.
        trust_model_code: import the user code the record names.
        model: build this registry name or import path instead of the recorded one; its
            arguments are ``model_kwargs`` over the recorded ones when it is the recorded
            builder, else ``model_kwargs`` alone.  The recorded transforms are replayed.
        model_kwargs: keyword arguments for ``model`` (or for the recorded builder).

    Returns:
        The model, freshly initialised, whose parameter names and shapes fit the record.

    Raises:
        ModelCodeNeeded: the record names user code (or nothing) and neither ``model`` nor
            ``trust_model_code`` was given.
        ModelError: a malformed record, an unknown name, or transforms that do not apply.
    """
    from ..compress.transforms import apply_transforms
    from .user import ModelCodeNeeded

    record = arch if isinstance(arch, dict) else {}
    kwargs = record.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"{where}: architecture arguments are malformed")
    if model is not None:
        recorded = record.get("import") if isinstance(record.get("import"), str) else record.get("name")
        same = recorded is not None and model.strip() == recorded
        built = build(model, kwargs={**(kwargs if same else {}), **(model_kwargs or {})})
    elif isinstance(record.get("import"), str):
        if not trust_model_code:
            raise ModelCodeNeeded(where, record["import"])
        built = build(record["import"], kwargs={**kwargs, **(model_kwargs or {})})
    elif isinstance(record.get("name"), str):
        built = create(record["name"], **{**kwargs, **(model_kwargs or {})})
    elif arch is None:
        raise ModelCodeNeeded(where, None)
    else:
        raise ModelError(f"{where}: no registry architecture is recorded; pass the model to load into")
    return apply_transforms(built, record.get("transforms"), where)


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

__all__ = ["build", "create", "available", "rebuild", "register", "LeNet300", "LeNet5", "LSTMClassifier", "ResNet18",
           "MobileNetV2", "VisionTransformer"]
