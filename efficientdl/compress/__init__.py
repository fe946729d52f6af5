"""Algorithms for efficient inference: pruning, weight sharing, Huffman coding, sparse index,
fixed-point and int8 quantization, ternary weights, BatchNorm folding, low-rank and
tensor-train factorisation."""

from .quantization.fixed_point import freeze, integer_weights, quantize_linear
from .fold import fold_batchnorm
from .coding.huffman import huffman_decode, huffman_encode
from .layers import compressible_layers, compressible_tensors
from .pruning.prune import (apply_mask, magnitude_mask, prune, prune_once, sensitivity,
                    sparsities_from_sensitivity, sparsity_schedule, std_mask, weight_mask)
from .lowrank.svd import low_rank, svd_linear
from .lowrank.conv import conv_low_rank, decompose_conv
from .macs import model_macs
from .recipe import Recipe, load_recipe, validate
from .quantization.share import SharedWeight, kmeans_1d, share, share_layer, shared_weight
from .coding.sparse_index import relative_index_decode, relative_index_encode
from .lowrank.tensor_train import tensor_train, tt_linear, tt_modes, tt_svd
from .quantization.ternary import ternarize, ternary_state

__all__ = [
    "Recipe", "SharedWeight", "apply_mask", "compressible_layers", "compressible_tensors", "conv_low_rank",
    "decompose_conv", "fold_batchnorm", "freeze", "huffman_decode", "integer_weights", "quantize_linear", "huffman_encode", "kmeans_1d", "load_recipe", "low_rank", "magnitude_mask", "model_macs",
    "prune", "prune_once", "relative_index_decode", "relative_index_encode", "sensitivity", "share", "share_layer",
    "shared_weight", "sparsities_from_sensitivity", "sparsity_schedule", "std_mask", "svd_linear", "tensor_train",
    "ternarize", "ternary_state", "tt_linear", "tt_modes", "tt_svd", "validate", "weight_mask",
]
