"""The compressed file format: the single owner of the bytes on disk.

The package is lazy (PEP 562): :func:`info` and :func:`is_container` come from
:mod:`.layout`, which imports no torch (``edl info FILE`` starts fast); the other names
from :mod:`.container`, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .layout import FORMAT_VERSION, info, is_container

__all__ = ["FORMAT_VERSION", "Container", "atomic_write", "decode", "encode", "info", "is_container", "load",
           "load_into", "read", "save"]

_FROM_CONTAINER = ("Container", "atomic_write", "decode", "encode", "load", "load_into", "read", "save")

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the import happens in __getattr__
    from .container import Container, atomic_write, decode, encode, load, load_into, read, save  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import :mod:`.container` (and torch) on first access to one of its names (PEP 562)."""
    if name in _FROM_CONTAINER:
        value = getattr(importlib.import_module(f"{__name__}.container"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
