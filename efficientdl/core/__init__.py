"""The small core every other part of the package imports, and that imports none of them.

* :mod:`~efficientdl.core.tensors`: which tensors of any ``nn.Module`` the methods
  compress, tied parameters, per-layer settings;
* :mod:`~efficientdl.core.parametrize`: the one fold of what the methods add to a tensor
  (parametrizations), plain copies and state dicts, the one module-replace function;
* :mod:`~efficientdl.core.registry` and :mod:`~efficientdl.core.options`: the registries
  extensions join and the options declared once with their ranges;
* :mod:`~efficientdl.core.state`: what the methods add to a weight (masks, codebooks,
  quantizers), and :mod:`~efficientdl.core.quantspec`, a quantizer's parameters;
* errors live in :mod:`efficientdl.errors`.

The names below load their module on first use (PEP 562): ``registry``, ``options`` and
``quantspec`` import no torch, so the file format's torch-free reader can use them.
"""

import importlib
from typing import Any

_WHERE = {
    "Option": "options", "check_options": "options",
    "Entry": "registry", "Registry": "registry",
    "fold_parametrization": "parametrize", "fold_parametrizations": "parametrize", "plain_copy": "parametrize",
    "plain_state_dict": "parametrize", "replace_module": "parametrize",
    **{name: "tensors" for name in ("COMPRESSIBLE_TYPES", "NORM_TYPES", "WeightTensor", "check_spec_keys",
                                    "compressible_layers", "compressible_tensors", "layer_setting", "layer_type",
                                    "retie", "run_with_layer_hooks", "select_layers", "tensor_setting",
                                    "tied_pairs", "tied_parameters")},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
