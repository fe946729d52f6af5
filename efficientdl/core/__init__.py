"""The small core every other part of the package imports, and that imports none of them.

* :mod:`~efficientdl.core.tensors`: which tensors of any ``nn.Module`` the methods
  compress, tied parameters, per-layer settings;
* :mod:`~efficientdl.core.parametrize`: the one fold of what the methods add to a tensor
  (parametrizations), plain copies and state dicts, the one module-replace function;
* :mod:`~efficientdl.core.registry` and :mod:`~efficientdl.core.options`: the registries
  extensions join and the options declared once with their ranges;
* errors live in :mod:`efficientdl.errors`.
"""

from .options import Option, check_options
from .parametrize import fold_parametrization, fold_parametrizations, plain_copy, plain_state_dict, replace_module
from .registry import Entry, Registry
from .tensors import (COMPRESSIBLE_TYPES, NORM_TYPES, WeightTensor, check_spec_keys, compressible_layers,
                      compressible_tensors, layer_setting, layer_type, retie, run_with_layer_hooks, select_layers,
                      tensor_setting, tied_pairs, tied_parameters)

__all__ = ["COMPRESSIBLE_TYPES", "NORM_TYPES", "Entry", "Option", "Registry", "WeightTensor", "check_options",
           "check_spec_keys", "compressible_layers", "compressible_tensors", "fold_parametrization",
           "fold_parametrizations", "layer_setting", "layer_type", "plain_copy", "plain_state_dict",
           "replace_module", "retie", "run_with_layer_hooks", "select_layers", "tensor_setting", "tied_pairs",
           "tied_parameters"]
