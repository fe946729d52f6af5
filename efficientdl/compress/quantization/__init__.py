"""Quantization: weight sharing by k-means with trained centroids (Han et al., ICLR'16),
dynamic fixed point and int8 affine quantization, ternary and binary weights (TTQ, TWN)."""

from .fixed_point import freeze, integer_weights, quantize_linear
from .share import SharedWeight, kmeans_1d, share, share_layer, shared_weight
from .ternary import ternarize, ternary_state
from .registry import QUANTIZERS, quantize

__all__ = ["QUANTIZERS", "SharedWeight", "freeze", "integer_weights", "kmeans_1d", "quantize", "quantize_linear", "share",
           "share_layer", "shared_weight", "ternarize", "ternary_state"]
