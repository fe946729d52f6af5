"""Which parameters the compression stages act on, and per-layer settings.

The implementation is the package's core (:mod:`efficientdl.core.tensors` and
:mod:`efficientdl.core.parametrize`), which the file format and the runtime import
too; the stages and users have always found these names here.
"""

from ..core.parametrize import (fold_parametrization, fold_parametrizations, plain_copy, plain_state_dict,
                                replace_module)
from ..core.tensors import (COMPRESSIBLE_TYPES, NORM_TYPES, WeightTensor, check_spec_keys, compressible_layers,
                            compressible_tensors, is_pattern, layer_setting, layer_type, retie,
                            run_with_layer_hooks, select_layers, tensor_setting, tied_pairs, tied_parameters)

__all__ = ["COMPRESSIBLE_TYPES", "NORM_TYPES", "WeightTensor", "check_spec_keys", "compressible_layers",
           "compressible_tensors", "fold_parametrization", "fold_parametrizations", "is_pattern", "layer_setting",
           "layer_type", "plain_copy", "plain_state_dict", "replace_module", "retie", "run_with_layer_hooks",
           "select_layers", "tensor_setting", "tied_pairs", "tied_parameters"]
