"""Canonical, length-limited Huffman coding of integer symbol streams.

Stage three of Deep Compression (Han, Mao and Dally, "Deep Compression:
Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman
Coding", ICLR 2016, Section 4) Huffman-codes the quantized weight indices and
the sparse relative indices, whose distributions are strongly skewed.

The code is *canonical*: it is fully described by one code length per symbol.
Codewords are handed out in order of ``(length, symbol)``, each one the previous
codeword plus one, shifted left whenever the length grows.  Only the lengths
need to be stored next to the bit stream.

Bits are packed most-significant-bit first.  The hot loops (bit packing and
table-driven decoding) are compiled with numba.  Decoding checks everything it
reads: the code lengths (range, Kraft inequality), every codeword, and the end
of the payload, and raises :class:`efficientdl.errors.FormatError` on the first
fault; it never reads past the payload and always terminates.
"""

from __future__ import annotations

import numba
import numpy as np

from efficientdl.errors import FormatError

__all__ = [
    "MAX_CODE_LENGTH_BITS",
    "MAX_ALPHABET_SIZE",
    "huffman_code_lengths",
    "canonical_codes",
    "huffman_encode",
    "huffman_decode",
    "huffman_size_bits",
]

#: Longest codeword the decoder accepts, in bits.
MAX_CODE_LENGTH_BITS = 32
#: Largest alphabet (number of distinct symbol values) the coder accepts.
MAX_ALPHABET_SIZE = 1 << 20
#: Bits resolved by one lookup of the primary decoding table.
_TABLE_BITS = 11

# Status codes returned by the compiled decoder.
_OK = 0
_ERR_INVALID_CODE = 1
_ERR_OUT_OF_BITS = 2


# ----------------------------------------------------------------------------
# Code lengths
# ----------------------------------------------------------------------------


@numba.njit(cache=True)
def _package_merge(weights_sorted, max_length_bits):  # pragma: no cover - compiled
    """Boundary-free package-merge on ascending weights; returns lengths in that order."""
    n = weights_sorted.shape[0]
    width = 2 * n
    level_weight = np.zeros((max_length_bits, width), dtype=np.int64)
    level_is_leaf = np.zeros((max_length_bits, width), dtype=np.uint8)
    level_size = np.zeros(max_length_bits, dtype=np.int64)
    for i in range(n):
        level_weight[0, i] = weights_sorted[i]
        level_is_leaf[0, i] = 1
    level_size[0] = n
    for j in range(1, max_length_bits):
        num_packages = level_size[j - 1] // 2
        li = 0  # next leaf
        pi = 0  # next package
        k = 0
        while li < n or pi < num_packages:
            take_leaf = False
            if pi >= num_packages:
                take_leaf = True
            elif li < n:
                pw = level_weight[j - 1, 2 * pi] + level_weight[j - 1, 2 * pi + 1]
                if weights_sorted[li] <= pw:
                    take_leaf = True
            if take_leaf:
                level_weight[j, k] = weights_sorted[li]
                level_is_leaf[j, k] = 1
                li += 1
            else:
                level_weight[j, k] = level_weight[j - 1, 2 * pi] + level_weight[j - 1, 2 * pi + 1]
                level_is_leaf[j, k] = 0
                pi += 1
            k += 1
        level_size[j] = k
    lengths = np.zeros(n, dtype=np.int64)
    num = 2 * n - 2
    for j in range(max_length_bits - 1, -1, -1):
        leaves = 0
        for i in range(num):
            leaves += level_is_leaf[j, i]
        for i in range(leaves):
            lengths[i] += 1
        num = 2 * (num - leaves)
    return lengths


def huffman_code_lengths(counts: np.ndarray, max_length: int = 24) -> np.ndarray:
    """Optimal length-limited prefix-code lengths for the given symbol counts.

    Deep Compression (Han et al., ICLR 2016, Section 4) Huffman-codes the weight
    and index streams.  This returns the code lengths ``l_s`` that minimise the
    encoded size ``sum_s counts[s] * l_s`` subject to the Kraft inequality
    ``sum_s 2**(-l_s) <= 1`` and ``l_s <= max_length``.  It uses the
    package-merge algorithm (Larmore and Hirschberg, 1990), which is exact: with a
    limit no shorter than the unconstrained Huffman tree it gives the Huffman
    cost, otherwise the optimal cost under the limit.  Symbols of count 0 get
    length 0 (no codeword).  When a single symbol is used it gets length 1, so a
    one-symbol stream still produces decodable bits.

    Args:
        counts: 1-D array of non-negative integer occurrence counts, one per
            alphabet symbol (at most ``MAX_ALPHABET_SIZE`` entries).
        max_length: longest allowed codeword in bits, 1..``MAX_CODE_LENGTH_BITS``;
            ``2**max_length`` must be at least the number of used symbols.

    Returns:
        ``uint8`` array of code lengths in bits, same size as ``counts``.

    Raises:
        ValueError: ``counts`` is not a 1-D array of non-negative integers, or
            ``max_length`` is out of range or too short for the used symbols.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError("counts must be a 1-D array")
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        raise ValueError("counts must be integers")
    if counts.size > MAX_ALPHABET_SIZE:
        raise ValueError(f"alphabet of {counts.size} symbols exceeds {MAX_ALPHABET_SIZE}")
    if not isinstance(max_length, (int, np.integer)) or not 1 <= max_length <= MAX_CODE_LENGTH_BITS:
        raise ValueError(f"max_length must be an integer in 1..{MAX_CODE_LENGTH_BITS}")
    counts = counts.astype(np.int64, copy=False)
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    if n > (1 << int(max_length)):
        raise ValueError(f"{n} used symbols cannot be coded with codewords of at most {max_length} bits")
    # The unconstrained Huffman tree is never deeper than n - 1.
    limit = min(int(max_length), n - 1)
    order = np.argsort(counts[used], kind="stable")
    sorted_lengths = _package_merge(counts[used][order], limit)
    lengths[used[order]] = sorted_lengths.astype(np.uint8)
    return lengths


# ----------------------------------------------------------------------------
# Canonical codes and validation
# ----------------------------------------------------------------------------


def _validate_lengths(lengths) -> np.ndarray:
    """Check stored code lengths; returns them as int64 or raises FormatError."""
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise FormatError("Huffman code lengths are not a 1-D array")
    if arr.size > MAX_ALPHABET_SIZE:
        raise FormatError(f"Huffman alphabet of {arr.size} symbols exceeds {MAX_ALPHABET_SIZE}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise FormatError("Huffman code lengths are not integers")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > MAX_CODE_LENGTH_BITS):
        raise FormatError(f"Huffman code length outside 0..{MAX_CODE_LENGTH_BITS} bits")
    nz = arr[arr > 0]
    # Kraft sum scaled by 2**MAX_CODE_LENGTH_BITS: exact in int64 for this alphabet size.
    kraft_scaled = int(np.sum(np.left_shift(np.int64(1), MAX_CODE_LENGTH_BITS - nz)))
    if kraft_scaled > (1 << MAX_CODE_LENGTH_BITS):
        raise FormatError("Huffman code lengths violate the Kraft inequality")
    return arr


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codewords for the given code lengths.

    Canonical assignment (as in DEFLATE, RFC 1951 Section 3.2.2) used for the
    Huffman stage of Deep Compression (Han et al., ICLR 2016): symbols sorted by
    ``(length, symbol)`` receive consecutive codewords; with ``n_l`` codes of
    length ``l``, the first code of length ``l`` is
    ``first[l] = (first[l-1] + n_{l-1}) << 1`` and ``first[1] = 0``.  A codeword of
    length ``l`` occupies the low ``l`` bits of its entry and is sent MSB first.

    Args:
        lengths: 1-D integer array of code lengths in bits (0 = unused symbol).

    Returns:
        ``uint32`` array of codewords, same size as ``lengths`` (0 where the
        length is 0).

    Raises:
        FormatError: a length is outside 0..``MAX_CODE_LENGTH_BITS`` or the
            lengths violate the Kraft inequality ``sum 2**(-l) <= 1``.
    """
    arr = _validate_lengths(lengths)
    codes = np.zeros(arr.size, dtype=np.uint32)
    if arr.size == 0:
        return codes
    bl_count = np.bincount(arr, minlength=MAX_CODE_LENGTH_BITS + 1).astype(np.int64)
    bl_count[0] = 0
    first = np.zeros(MAX_CODE_LENGTH_BITS + 2, dtype=np.int64)
    code = 0
    for length in range(1, MAX_CODE_LENGTH_BITS + 1):
        code = (code + int(bl_count[length - 1])) << 1
        first[length] = code
    used = np.flatnonzero(arr)
    order = used[np.lexsort((used, arr[used]))]  # by (length, symbol)
    sorted_len = arr[order]
    # Rank of each symbol among those of the same length.
    starts = np.searchsorted(sorted_len, sorted_len, side="left")
    rank = np.arange(order.size, dtype=np.int64) - starts
    codes[order] = (first[sorted_len] + rank).astype(np.uint32)
    return codes


def huffman_size_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Encoded payload size in bits, ``sum_s counts[s] * lengths[s]``.

    The Huffman stage of Deep Compression (Han et al., ICLR 2016, Section 4)
    stores each symbol with its codeword; the payload size is the count-weighted
    sum of code lengths (excluding the final byte padding).

    Args:
        counts: 1-D non-negative integer counts per symbol.
        lengths: 1-D code lengths in bits, same size.

    Returns:
        Total number of payload bits as a Python ``int``.

    Raises:
        ValueError: the arrays differ in size, or a used symbol has no codeword.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if counts.shape != lengths.shape:
        raise ValueError("counts and lengths must have the same shape")
    if np.any((counts > 0) & (lengths == 0)):
        raise ValueError("a used symbol has code length 0")
    return int(np.sum(counts * lengths))


# ----------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------


@numba.njit(cache=True)
def _pack_bits(symbols, codes, lengths, total_bits):  # pragma: no cover - compiled
    """MSB-first concatenation of the codewords of ``symbols``."""
    out = np.zeros((total_bits + 7) // 8, dtype=np.uint8)
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        ln = lengths[s]
        acc = (acc << np.uint64(ln)) | np.uint64(codes[s])
        nbits += ln
        while nbits >= 8:
            nbits -= 8
            out[pos] = np.uint8((acc >> np.uint64(nbits)) & np.uint64(0xFF))
            pos += 1
    if nbits > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nbits)) & np.uint64(0xFF))
    return out


def huffman_encode(symbols: np.ndarray, num_symbols: int) -> tuple[np.ndarray, bytes, int]:
    """Huffman-code an integer symbol stream with an optimal canonical code.

    The Huffman stage of Deep Compression (Han et al., ICLR 2016, Section 4):
    counts the symbols, builds optimal code lengths limited to 24 bits (see
    :func:`huffman_code_lengths`), assigns canonical codewords
    (:func:`canonical_codes`) and packs them MSB first.  The payload has
    ``bit_length = sum_s counts[s] * lengths[s]`` meaningful bits, zero-padded to
    whole bytes.

    Args:
        symbols: array of integer symbols in ``0..num_symbols-1`` (any shape;
            read in C order).
        num_symbols: alphabet size, 1..``MAX_ALPHABET_SIZE``.

    Returns:
        ``(lengths, payload, bit_length)``: ``uint8`` code lengths in bits of size
        ``num_symbols``, the packed bytes, and the number of meaningful bits.

    Raises:
        ValueError: ``symbols`` is not integer or holds a value outside the
            alphabet, or ``num_symbols`` is out of range.
    """
    if not isinstance(num_symbols, (int, np.integer)) or not 1 <= num_symbols <= MAX_ALPHABET_SIZE:
        raise ValueError(f"num_symbols must be an integer in 1..{MAX_ALPHABET_SIZE}")
    num_symbols = int(num_symbols)
    sym = np.ascontiguousarray(symbols).reshape(-1)
    if sym.size == 0:
        return np.zeros(num_symbols, dtype=np.uint8), b"", 0
    if not np.issubdtype(sym.dtype, np.integer):
        raise ValueError("symbols must be integers")
    if int(sym.min()) < 0 or int(sym.max()) >= num_symbols:
        raise ValueError(f"symbols must lie in 0..{num_symbols - 1}")
    if sym.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64)):
        sym = sym.astype(np.int64)  # one compiled packer per dtype: keep the set small
    counts = np.bincount(sym, minlength=num_symbols)
    lengths = huffman_code_lengths(counts, 24)
    codes = canonical_codes(lengths)
    total_bits = huffman_size_bits(counts, lengths)
    payload = _pack_bits(sym, codes, lengths.astype(np.int64), total_bits)
    return lengths, payload.tobytes(), total_bits


# ----------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------


def _decode_tables(lengths: np.ndarray):
    """Build the primary lookup table and canonical per-length limits."""
    max_len = int(lengths.max())
    table_bits = min(_TABLE_BITS, max_len)
    codes = canonical_codes(lengths).astype(np.int64)
    # Primary table: entry = symbol << 6 | length, or 0 (long code or invalid prefix).
    table = np.zeros(1 << table_bits, dtype=np.int64)
    short = np.flatnonzero((lengths > 0) & (lengths <= table_bits))
    for s in short:  # at most 2**table_bits entries in total are written
        ln = int(lengths[s])
        span = 1 << (table_bits - ln)
        start = int(codes[s]) << (table_bits - ln)
        table[start : start + span] = (int(s) << 6) | ln
    # Canonical first code, count and offset per length, and symbols by (length, symbol).
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))].astype(np.int64)
    bl_count = np.bincount(lengths, minlength=MAX_CODE_LENGTH_BITS + 1).astype(np.int64)
    bl_count[0] = 0
    first = np.zeros(MAX_CODE_LENGTH_BITS + 1, dtype=np.int64)
    offset = np.zeros(MAX_CODE_LENGTH_BITS + 1, dtype=np.int64)
    code = 0
    off = 0
    for length in range(1, MAX_CODE_LENGTH_BITS + 1):
        code = (code + int(bl_count[length - 1])) << 1
        first[length] = code
        offset[length] = off
        off += int(bl_count[length])
    return table, table_bits, max_len, first, bl_count, offset, order


@numba.njit(cache=True)
def _decode_kernel(data, count, table, table_bits, max_len, first, bl_count, offset, order, out):  # pragma: no cover
    """Table-driven canonical decoding; returns (status, symbols decoded)."""
    n_bytes = data.shape[0]
    total_bits = n_bytes * 8
    consumed = 0
    buf = 0  # low `avail` bits are pending input, MSB first
    avail = 0
    pos = 0
    table_mask = (1 << table_bits) - 1
    for i in range(count):
        if avail < 32:
            # Refill to at least 33 bits; past the end feed zeros without reading.
            if pos + 4 <= n_bytes:
                buf = (buf << 32) | (
                    (np.int64(data[pos]) << 24)
                    | (np.int64(data[pos + 1]) << 16)
                    | (np.int64(data[pos + 2]) << 8)
                    | np.int64(data[pos + 3])
                )
                pos += 4
                avail += 32
            else:
                while avail < 32:
                    byte = 0
                    if pos < n_bytes:
                        byte = np.int64(data[pos])
                    buf = (buf << 8) | byte
                    pos += 1
                    avail += 8
        entry = table[(buf >> (avail - table_bits)) & table_mask]
        ln = entry & 63
        if ln != 0:
            sym = entry >> 6
        else:
            sym = -1
            ln = table_bits + 1
            while ln <= max_len:
                code = (buf >> (avail - ln)) & ((1 << ln) - 1)
                d = code - first[ln]
                if d >= 0 and d < bl_count[ln]:
                    sym = order[offset[ln] + d]
                    break
                ln += 1
            if sym < 0:
                return _ERR_INVALID_CODE, i
        avail -= ln
        consumed += ln
        if consumed > total_bits:
            return _ERR_OUT_OF_BITS, i
        out[i] = sym
    return _OK, count


def huffman_decode(lengths: np.ndarray, payload: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols of a canonical Huffman payload.

    Inverse of :func:`huffman_encode` for the Huffman stage of Deep Compression
    (Han et al., ICLR 2016, Section 4).  The canonical code is rebuilt from the
    lengths (codewords sorted by ``(length, symbol)``); decoding looks up the
    next ``min(11, max length)`` bits in a table and, for longer codewords,
    compares the next ``l`` bits with the canonical range
    ``[first[l], first[l] + n_l)`` for increasing ``l``.

    Args:
        lengths: 1-D integer code lengths in bits, one per alphabet symbol, as
            returned by :func:`huffman_encode` (usually read from a file).
        payload: the packed bits (``bytes``, ``bytearray`` or ``memoryview``).
        count: number of symbols to decode (non-negative).

    Returns:
        1-D array of ``count`` symbols, in the smallest unsigned dtype that holds
        the alphabet (``uint8``, ``uint16`` or ``uint32``).

    Raises:
        FormatError: the lengths are invalid (not 1-D integers, out of
            0..``MAX_CODE_LENGTH_BITS``, violating the Kraft inequality, or all
            zero while ``count > 0``), ``count`` is negative or exceeds the
            payload's bits, a bit sequence is not a codeword, or the payload ends
            before ``count`` symbols are read.
    """
    arr = _validate_lengths(lengths)
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise FormatError("Huffman symbol count is not an integer") from None
    if count < 0:
        raise FormatError("Huffman symbol count is negative")
    if arr.size <= 1 << 8:
        dtype = np.uint8
    elif arr.size <= 1 << 16:
        dtype = np.uint16
    else:
        dtype = np.uint32
    if count == 0:
        return np.zeros(0, dtype=dtype)
    if arr.size == 0 or arr.max() == 0:
        raise FormatError("Huffman code lengths are all zero but symbols are expected")
    data = np.frombuffer(memoryview(payload).cast("B"), dtype=np.uint8)
    if count > data.size * 8:
        raise FormatError(f"Huffman payload of {data.size} bytes cannot hold {count} symbols")
    table, table_bits, max_len, first, bl_count, offset, order = _decode_tables(arr)
    out = np.empty(count, dtype=dtype)
    status, done = _decode_kernel(data, count, table, table_bits, max_len, first, bl_count, offset, order, out)
    if status == _ERR_INVALID_CODE:
        raise FormatError(f"invalid Huffman codeword at symbol {done}")
    if status == _ERR_OUT_OF_BITS:
        raise FormatError(f"Huffman payload ended after {done} of {count} symbols")
    return out
