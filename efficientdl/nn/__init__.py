"""Runtime: computing from compressed form (weights as a tensor subclass, per-layer dispatch),
EIE-style compressed layers, Winograd convolution, tensor-train fully connected."""

from .compressed import CompressedConv2d, CompressedLinear, runtime_memory, supports
from .dispatch import KERNELS, Dispatcher, KernelRow, register_kernel
from .tensor_train import TTLinear, tt_ranks
from .weights import SERVED, CompressedWeight, RuntimeReport, implements, settle, to_runtime
from .winograd import WinogradConv2d, to_winograd, winograd_matrices

__all__ = ["KERNELS", "SERVED", "CompressedConv2d", "CompressedLinear", "CompressedWeight", "Dispatcher", "KernelRow",
           "RuntimeReport", "TTLinear", "WinogradConv2d", "implements", "register_kernel", "runtime_memory", "settle",
           "supports", "to_runtime", "to_winograd", "tt_ranks", "winograd_matrices"]
