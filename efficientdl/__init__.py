"""efficientdl: make deep networks small, fast and energy-efficient, and show with numbers why.

Subpackages follow the lecture "Efficient Methods and Hardware for Deep Learning":
``compress`` (algorithms for efficient inference), ``train`` (efficient training),
``hardware``, plus ``data``, ``models``, ``format``, ``nn``, ``kernels``, ``report``
and the ``cli``.

The package is lazy (PEP 562): ``import efficientdl`` loads no subpackage, and
``efficientdl.compress`` (or any other in ``__all__``) is imported on first access, so
that importing one part loads only what it uses::

    import efficientdl as edl
    model, report = edl.compress.prune(model, sparsity=0.9)   # imports efficientdl.compress now
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBPACKAGES = ("compress", "data", "format", "hardware", "kernels", "models", "nn", "report", "train")

__all__ = ["__version__", *_SUBPACKAGES]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the imports happen in __getattr__
    from . import compress, data, format, hardware, kernels, models, nn, report, train  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the subpackage ``name`` on first access (PEP 562)."""
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES))
