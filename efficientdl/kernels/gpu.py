"""GPU kernel (Triton): sparse, codebook-indexed matrix products on NVIDIA GPUs.

The same product as :mod:`efficientdl.kernels.cpu`, ``y = W x`` with ``W`` pruned and
weight-shared, laid out for a GPU:

* ``W`` is stored column by column (CSC) over all rows; each entry is one int32
  ``(row << 8) | code`` (row < 2^23, code < 256 indexes the codebook, 0 = zero);
* one program handles ``cols_per_program`` consecutive columns and a block of the
  ``N`` right-hand sides; a column whose activations are all zero is skipped as a
  whole ("0 × a = 0", a branch uniform across the program, so no divergence);
* the entries of an active column are read in vectors of ``block`` and their products
  ``codebook[code] · x[j, :]`` are accumulated into ``y`` (fp32) by atomic adds,
  so the work is split along the reduction dimension (split-K) across all programs.

Importing this module needs Triton; :data:`HAS_TRITON` says whether it is there.
With ``TRITON_INTERPRET=1`` set before import, the kernel runs in Triton's
interpreter on CPU tensors (used by the tests on machines without a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

try:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

from . import cpu

MAX_ROWS = 1 << 23
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class GpuPackedMatrix:
    """``W`` in the GPU kernel's layout (see the module docstring).

    Attributes:
        shape: ``(rows, cols)``.
        colptr: int32 ``(cols + 1,)`` entry offsets of each column.
        entries: int32 ``(row << 8) | code`` per nonzero weight.
        codebook: float32 ``(256,)`` shared values, entry 0 = 0.
    """

    shape: tuple[int, int]
    colptr: torch.Tensor
    entries: torch.Tensor
    codebook: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.entries.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.colptr, self.entries, self.codebook))

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook: np.ndarray, device: torch.device | str) -> "GpuPackedMatrix":
        """Pack a ``(rows, cols)`` matrix of cluster indices (0 = pruned) for the GPU."""
        codes = np.asarray(codes)
        codebook = np.asarray(codebook, np.float32).ravel()
        if codes.ndim != 2:
            raise ValueError(f"codes must be 2-D (rows, cols), got shape {codes.shape}")
        if codebook.size > 256 or codebook.size == 0 or codebook[0] != 0:
            raise ValueError("the GPU kernel needs a codebook of at most 256 values with codebook[0] == 0")
        if codes.size and (codes.min() < 0 or codes.max() >= codebook.size):
            raise ValueError(f"codes must lie in [0, {codebook.size - 1}]")
        rows, cols = codes.shape
        if rows >= MAX_ROWS:
            raise ValueError(f"the GPU kernel supports fewer than {MAX_ROWS} rows, got {rows}")
        c, r = np.nonzero(codes.T)                                   # column-major order
        entries = (r.astype(np.int64) << 8) | codes[r, c]
        colptr = np.zeros(cols + 1, np.int64)
        np.cumsum(np.bincount(c, minlength=cols), out=colptr[1:])
        table = np.zeros(256, np.float32)
        table[:codebook.size] = codebook
        dev = torch.device(device)
        return cls((rows, cols), torch.from_numpy(colptr.astype(np.int32)).to(dev),
                   torch.from_numpy(entries.astype(np.int32)).to(dev), torch.from_numpy(table).to(dev))

    @classmethod
    def from_packed(cls, m: cpu.PackedMatrix, device: torch.device | str) -> "GpuPackedMatrix":
        """Convert the CPU layout (decoded once, at load time)."""
        return cls.from_codes(cpu.unpack(m), m.codebook, device)


if HAS_TRITON:
    @triton.jit
    def _csc_spmm_kernel(x_ptr, y_ptr, colptr_ptr, entries_ptr, codebook_ptr, cols, n,
                         COLS_PER_PROGRAM: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCK_N: tl.constexpr):  # pragma: no cover - runs on the GPU
        pid = tl.program_id(0)
        nb = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = nb < n
        for c in range(COLS_PER_PROGRAM):
            j = pid * COLS_PER_PROGRAM + c
            if j < cols:
                xv = tl.load(x_ptr + j * n + nb, mask=nmask, other=0.0).to(tl.float32)
                if tl.max(tl.abs(xv), axis=0) > 0:                     # 0 × a = 0
                    start = tl.load(colptr_ptr + j)
                    end = tl.load(colptr_ptr + j + 1)
                    for k0 in range(start, end, BLOCK):
                        offs = k0 + tl.arange(0, BLOCK)
                        m = offs < end
                        e = tl.load(entries_ptr + offs, mask=m, other=0)
                        w = tl.load(codebook_ptr + (e & 255), mask=m, other=0.0)
                        rows = e >> 8
                        tl.atomic_add(y_ptr + rows[:, None] * n + nb[None, :], w[:, None] * xv[None, :],
                                      mask=m[:, None] & nmask[None, :])


def matmul(m: GpuPackedMatrix, x: torch.Tensor, cols_per_program: int = 4) -> torch.Tensor:
    """``y = W x`` on the GPU (or in Triton's interpreter).

    Args:
        m: the packed matrix, on ``x``'s device.
        x: float16, bfloat16 or float32, contiguous, shape ``(cols,)`` or ``(cols, N)``.
        cols_per_program: columns handled by one program.

    Returns:
        ``y`` of shape ``(rows,)`` or ``(rows, N)`` in ``x``'s dtype (accumulated in fp32).

    Raises:
        ValueError: wrong shape, dtype, device or a non-contiguous tensor.
        RuntimeError: Triton is not installed.
    """
    if not HAS_TRITON:
        raise RuntimeError("the GPU kernel needs Triton (pip install triton)")
    rows, cols = m.shape
    if not isinstance(x, torch.Tensor) or x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be a float16, bfloat16 or float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() not in (1, 2) or x.shape[0] != cols:
        raise ValueError(f"x must have shape ({cols},) or ({cols}, N), got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    if x.device != m.device:
        raise ValueError(f"x is on {x.device}, the matrix on {m.device}")
    n = 1 if x.dim() == 1 else x.shape[1]
    y = torch.zeros((rows, n), dtype=torch.float32, device=x.device)
    if n and cols and m.entries.numel():
        block_n = min(64, triton.next_power_of_2(n))
        block = 128 if n == 1 else max(16, min(128, 2048 // block_n))   # entries × samples per tile
        grid = (triton.cdiv(cols, cols_per_program), triton.cdiv(n, block_n))
        _csc_spmm_kernel[grid](x, y, m.colptr, m.entries, m.codebook, cols, n,
                               COLS_PER_PROGRAM=cols_per_program, BLOCK=block, BLOCK_N=block_n)
    y = y.to(x.dtype)
    return y[:, 0] if x.dim() == 1 else y
