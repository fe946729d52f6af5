"""Algorithms for efficient inference: pruning, weight sharing, Huffman coding, sparse index."""

from .huffman import huffman_decode, huffman_encode
from .layers import compressible_layers
from .prune import (apply_mask, magnitude_mask, prune, prune_once, sensitivity,
                    sparsities_from_sensitivity, sparsity_schedule, std_mask, weight_mask)
from .lowrank import low_rank, svd_linear
from .recipe import Recipe, load_recipe, validate
from .share import SharedWeight, kmeans_1d, share, share_layer, shared_weight
from .sparse_index import relative_index_decode, relative_index_encode
from .ternary import ternarize, ternary_state

__all__ = [
    "Recipe", "SharedWeight", "apply_mask", "compressible_layers", "huffman_decode", "huffman_encode",
    "kmeans_1d", "load_recipe", "low_rank", "magnitude_mask", "prune", "prune_once", "relative_index_decode",
    "relative_index_encode", "sensitivity", "share", "share_layer", "shared_weight",
    "sparsities_from_sensitivity", "sparsity_schedule", "std_mask", "svd_linear", "ternarize", "ternary_state", "validate",
    "weight_mask",
]
