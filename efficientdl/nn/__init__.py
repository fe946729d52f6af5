"""Runtime layers: computing from compressed form, and Winograd convolution."""

from .compressed import CompressedConv2d, CompressedLinear, runtime_memory, supports, to_runtime
from .winograd import WinogradConv2d, to_winograd, winograd_matrices

__all__ = ["CompressedConv2d", "CompressedLinear", "WinogradConv2d", "runtime_memory", "supports", "to_runtime",
           "to_winograd", "winograd_matrices"]
