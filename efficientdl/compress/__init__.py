"""Algorithms for efficient inference, along the lecture's map.

* :mod:`~efficientdl.compress.pruning`: criteria and mask selections, iterative pruning with
  retraining, sensitivity (Han et al., NIPS'15);
* :mod:`~efficientdl.compress.quantization`: weight sharing by k-means with trained
  centroids (Han et al., ICLR'16), dynamic fixed point and int8, ternary and binary
  weights; the quantizer registry;
* :mod:`~efficientdl.compress.lowrank`: truncated SVD, convolution decomposition, tensor train;
* :mod:`~efficientdl.compress.coding`: Huffman coding and the relative sparse index;
* BatchNorm folding (:func:`fold_batchnorm`), MAC counts, the transforms a file replays,
  and the stages composed from recipes (:mod:`~efficientdl.compress.pipeline`,
  :mod:`~efficientdl.compress.methods`).
"""

from .coding import huffman_decode, huffman_encode, relative_index_decode, relative_index_encode
from .fold import fold_batchnorm
from .layers import compressible_layers, compressible_tensors
from .lowrank import conv_low_rank, decompose_conv, low_rank, svd_linear, tensor_train, tt_linear, tt_modes, tt_svd
from .macs import model_macs
from .pruning import (CRITERIA, SELECTIONS, apply_mask, check_targets, magnitude_mask, prune, prune_once,
                      sensitivity, sparsities_from_sensitivity, sparsity_schedule, std_mask, weight_mask)
from .quantization import (QUANTIZERS, SharedWeight, freeze, integer_weights, kmeans_1d, quantize, quantize_linear,
                           share, share_layer, shared_weight, ternarize, ternary_state)
from .recipe import Recipe, load_recipe, validate

__all__ = [
    "CRITERIA", "QUANTIZERS", "Recipe", "SELECTIONS", "SharedWeight", "apply_mask", "check_targets",
    "compressible_layers", "compressible_tensors", "conv_low_rank", "decompose_conv", "fold_batchnorm", "freeze",
    "huffman_decode", "huffman_encode", "integer_weights", "kmeans_1d", "load_recipe", "low_rank",
    "magnitude_mask", "model_macs", "prune", "prune_once", "quantize", "quantize_linear", "relative_index_decode",
    "relative_index_encode", "sensitivity", "share", "share_layer", "shared_weight", "sparsities_from_sensitivity",
    "sparsity_schedule", "std_mask", "svd_linear", "tensor_train", "ternarize", "ternary_state", "tt_linear",
    "tt_modes", "tt_svd", "validate", "weight_mask",
]
