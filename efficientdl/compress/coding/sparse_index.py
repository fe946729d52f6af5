"""Relative (delta) indices of sparse weights with filler-zero padding.

Deep Compression (Han, Mao and Dally, ICLR 2016, Section 2 and Figure 2) and EIE
(Han et al., ISCA 2016) store a pruned layer as its nonzero weights plus, for
each one, the number of zeros ``z`` skipped since the previous stored entry:

    position_k = position_{k-1} + z_k + 1,    position_{-1} = -1.

``z`` is stored in ``index_bits`` bits, so ``z <= 2**index_bits - 1``.  A longer
run of zeros is bridged by *filler* entries that hold an explicit zero weight at
``previous + 2**index_bits`` (``z = 2**index_bits - 1``), repeated as needed.
"""

from __future__ import annotations

import numpy as np

from efficientdl.errors import FormatError

__all__ = ["relative_index_encode", "relative_index_decode"]


def _check_index_bits(index_bits: int) -> int:
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) or not 1 <= index_bits <= 16:
        raise ValueError("index_bits must be an integer in 1..16")
    return int(index_bits)


def relative_index_encode(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative indices of sparse entries, with filler entries for long zero runs.

    The sparse format of Deep Compression (Han et al., ICLR 2016, Figure 2):
    entry ``k`` stores ``z_k = position_k - position_{k-1} - 1`` zeros skipped
    (``position_{-1} = -1``) in ``index_bits`` bits.  A gap with
    ``z >= 2**index_bits`` first gets ``floor(z / 2**index_bits)`` filler entries,
    each at ``previous + 2**index_bits`` with ``z = 2**index_bits - 1``; the real
    entry then stores ``z mod 2**index_bits``.  Computed without a per-entry loop.

    Args:
        positions: 1-D strictly increasing non-negative integer flat indices of
            the nonzero weights (e.g. ``np.flatnonzero(weights)``).
        index_bits: bits per stored relative index, 1..16.

    Returns:
        ``(deltas, is_filler)``: zeros skipped per entry (``uint8`` when
        ``index_bits <= 8``, else ``uint16``) and a ``bool`` mask marking filler
        entries, both over all entries (real and filler) in position order.

    Raises:
        ValueError: ``index_bits`` is outside 1..16, or ``positions`` is not a
            1-D strictly increasing array of non-negative integers.
    """
    bits = _check_index_bits(index_bits)
    pos = np.asarray(positions)
    if pos.ndim != 1:
        raise ValueError("positions must be a 1-D array")
    dtype = np.uint8 if bits <= 8 else np.uint16
    if pos.size == 0:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=bool)
    if not np.issubdtype(pos.dtype, np.integer):
        raise ValueError("positions must be integers")
    pos = pos.astype(np.int64, copy=False)
    if pos[0] < 0:
        raise ValueError("positions must be non-negative")
    span = np.int64(1) << bits  # 2**index_bits: distance covered by one filler
    zeros_skipped = np.diff(pos, prepend=np.int64(-1)) - 1
    if zeros_skipped.min() < 0:
        raise ValueError("positions must be strictly increasing")
    fillers = zeros_skipped >> bits  # floor(z / 2**index_bits)
    # Output slot of each real entry: its rank plus all fillers up to and including its gap.
    slot = np.arange(pos.size, dtype=np.int64) + np.cumsum(fillers)
    total = int(slot[-1]) + 1
    deltas = np.full(total, span - 1, dtype=dtype)
    is_filler = np.ones(total, dtype=bool)
    deltas[slot] = (zeros_skipped & (span - 1)).astype(dtype)
    is_filler[slot] = False
    return deltas, is_filler


def relative_index_decode(deltas: np.ndarray, total_length: int | None = None) -> np.ndarray:
    """Absolute positions of all stored entries (real and filler) from relative indices.

    Inverse of :func:`relative_index_encode` (Deep Compression, Han et al.,
    ICLR 2016, Figure 2): ``position_k = sum_{j<=k} (z_j + 1) - 1``.

    Args:
        deltas: 1-D non-negative integer zeros-skipped values, one per entry
            (usually read from a file).
        total_length: number of positions in the dense tensor; when given every
            decoded position must be below it.

    Returns:
        ``int64`` array of entry positions, strictly increasing.

    Raises:
        ValueError: ``deltas`` is not a 1-D integer array, or ``total_length`` is
            negative.
        FormatError: a delta is negative, or a position falls at or beyond
            ``total_length``.
    """
    d = np.asarray(deltas)
    if d.ndim != 1:
        raise ValueError("deltas must be a 1-D array")
    if d.size and not np.issubdtype(d.dtype, np.integer):
        raise ValueError("deltas must be integers")
    if total_length is not None:
        total_length = int(total_length)
        if total_length < 0:
            raise ValueError("total_length must be non-negative")
    if d.size == 0:
        return np.zeros(0, dtype=np.int64)
    if d.min() < 0:
        raise FormatError("relative sparse index holds a negative delta")
    if int(d.max()) >= (1 << 62) // (d.size + 1):  # cumulative sum would overflow int64
        raise FormatError("relative sparse index delta is too large")
    positions = np.cumsum(d.astype(np.int64) + 1) - 1
    if total_length is not None and positions[-1] >= total_length:
        raise FormatError(
            f"relative sparse index reaches position {int(positions[-1])} beyond length {total_length}"
        )
    return positions
