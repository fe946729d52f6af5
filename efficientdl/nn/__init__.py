"""Runtime layers: computing from compressed form, Winograd convolution, tensor-train fully connected."""

from .compressed import CompressedConv2d, CompressedLinear, runtime_memory, supports, to_runtime
from .tensor_train import TTLinear, tt_ranks
from .winograd import WinogradConv2d, to_winograd, winograd_matrices

__all__ = ["CompressedConv2d", "CompressedLinear", "TTLinear", "WinogradConv2d", "runtime_memory", "supports",
           "to_runtime", "to_winograd", "tt_ranks", "winograd_matrices"]
