"""Compiled leaf kernels with a small array-in / array-out API.

``cpu``: numba kernels for sparse, codebook-indexed matrix products (EIE's layout).
``gpu``: the Triton kernel for the same products on NVIDIA GPUs (imported lazily;
needs a CUDA device and Triton).
"""

from . import cpu

__all__ = ["cpu"]
