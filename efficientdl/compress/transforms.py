"""Structural changes to a registry model, recorded so that files can rebuild them.

Some compression methods change a network's structure, not only its weights: a low-rank
factorisation replaces one layer by two, a quantizer inserts a rounding step in front of
a layer.  Such a method records what it did in the model's ``edl_arch["transforms"]``,
a list of ``{"op": name, ...JSON parameters}``; a checkpoint or compressed file stores
``edl_arch``, and :func:`apply_transforms` replays the list on the freshly built
registry model, after which the stored weights fit it exactly.

A transform is a function ``fn(model, **params) -> None`` registered under its op name
with :func:`register_transform` in :data:`TRANSFORMS`; it must itself call
:func:`record_transform` so that the replayed model records the same list again.  The
registry belongs to ``compress`` because the replay functions are the methods' own
code (the modules of this package register them when ``efficientdl.compress`` is
imported); :func:`efficientdl.models.rebuild` calls :func:`apply_transforms`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from ..core.registry import Registry
from ..errors import EdlError, ModelError

#: op name → replay function ``fn(model, **params)``
TRANSFORMS: Registry[Callable[..., None]] = Registry("model transform")


def register_transform(op: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator registering the replay function of the structural change ``op``.

    Args:
        op: the name stored in ``edl_arch["transforms"][i]["op"]``.

    Returns:
        A decorator that registers its argument and returns it unchanged.
    """

    return TRANSFORMS.register(op)


def record_transform(model: nn.Module, op: str, **params: Any) -> None:
    """Append ``{"op": op, **params}`` to ``model.edl_arch["transforms"]``.

    Models without ``edl_arch`` (a user's own class) are left alone: they are rebuilt
    by the user, who applies the same methods again.

    Args:
        model: the model that was changed.
        op: a registered transform name.
        **params: JSON-serialisable arguments of the replay function.
    """
    arch = getattr(model, "edl_arch", None)
    if isinstance(arch, dict):
        arch = copy.deepcopy(arch)
        arch.setdefault("transforms", []).append({"op": op, **copy.deepcopy(params)})
        model.edl_arch = arch


def apply_transforms(model: nn.Module, transforms: Any, where: str = "architecture") -> nn.Module:
    """Replay recorded structural changes on a freshly built model (see the module docstring).

    Args:
        model: the model built from the registry.
        transforms: the list stored in ``edl_arch["transforms"]`` (None or empty: nothing).
        where: the file named in error messages.

    Returns:
        ``model``, changed in place.

    Raises:
        ModelError: a malformed list, an unknown op, or parameters the op refuses.
    """
    if transforms is None:
        return model
    if not isinstance(transforms, list):
        raise ModelError(f"{where}: 'transforms' must be a list")
    for i, step in enumerate(transforms):
        if not isinstance(step, dict) or not isinstance(step.get("op"), str):
            raise ModelError(f"{where}: transform {i} is malformed (expected a mapping with an 'op' name)")
        params = {k: v for k, v in step.items() if k != "op"}
        if step["op"] not in TRANSFORMS:
            raise ModelError(f"{where}: unknown transform {step['op']!r} (known: {', '.join(sorted(TRANSFORMS))})")
        fn = TRANSFORMS.get(step["op"])
        try:
            fn(model, **params)
        except (TypeError, ValueError, KeyError, AttributeError, EdlError) as error:
            raise ModelError(f"{where}: transform {i} ({step['op']}) does not fit the model ({error})") from None
    return model
