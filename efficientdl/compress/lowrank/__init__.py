"""Low-rank approximation: truncated SVD of fully connected layers, spatial and channel
decomposition of convolutions, and tensor-train layers (Novikov et al., NIPS'15)."""

from .conv import conv_low_rank, decompose_conv
from .svd import choose_rank, low_rank, svd_linear
from .tensor_train import tensor_train, tt_linear, tt_modes, tt_svd

__all__ = ["choose_rank", "conv_low_rank", "decompose_conv", "low_rank", "svd_linear", "tensor_train",
           "tt_linear", "tt_modes", "tt_svd"]
