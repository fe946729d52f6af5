"""Runtime layers that compute from compressed form."""

from .compressed import CompressedConv2d, CompressedLinear, runtime_memory, supports, to_runtime

__all__ = ["CompressedConv2d", "CompressedLinear", "runtime_memory", "supports", "to_runtime"]
