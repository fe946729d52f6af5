"""Bytes-level pieces of the compressed file: sections, fixed-width packing and symbol streams.

A *section* is a run of bytes in the blob, named in a tensor record as
``[offset, length, crc32]``.  A *symbol stream* (relative indices, codebook indices,
integer codes) is stored either

* ``"fixed"``: one section, ``count`` unsigned ``bits``-bit fields packed MSB first and
  zero-padded to whole bytes (:func:`pack_fixed`); or
* ``"huffman"``: a ``<key>_table`` section holding the canonical code length of each
  symbol (one byte each, trailing unused symbols dropped), then the ``<key>`` section
  with the codewords packed MSB first (:mod:`efficientdl.compress.coding.huffman`).

This module imports neither torch nor numba: the Huffman coder of
:mod:`efficientdl.compress.coding` (numba-compiled; importing it runs
``efficientdl.compress``, which imports torch) is imported only when a stream is
encoded or fully decoded.  :func:`huffman_decode_numpy` decodes a stream with numpy
alone, for :func:`efficientdl.format.info`, which must start without torch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError

CODINGS = ("huffman", "fixed")
#: Longest Huffman codeword a reader accepts, in bits (as the Huffman decoder).
MAX_CODE_LENGTH_BITS = 32


# --------------------------------------------------------------------------- bit packing
def pack_fixed(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers at a fixed width, MSB first."""
    v = np.asarray(values, dtype=np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitmat = ((v[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.ravel()).tobytes()


def unpack_fixed(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`; the payload length must match exactly."""
    if len(payload) != (count * bits + 7) // 8:
        raise FormatError(f"fixed-width stream has {len(payload)} bytes, expected {(count * bits + 7) // 8}")
    flat = np.unpackbits(np.frombuffer(payload, np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return flat.astype(np.int64) @ weights if count else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- writing
@dataclass
class Writer:
    """The blob being written: sections appended back to back."""

    blob: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> list[int]:
        """Append ``data``; return its section entry ``[offset, length, crc32]``."""
        offset = len(self.blob)
        self.blob += data
        return [offset, len(data), zlib.crc32(data)]

    def absorb(self, other: "Writer", sections: dict[str, list[int]]) -> None:
        """Append the blob of ``other`` (a writer that holds exactly ``sections``, e.g. one
        tensor written on trial) and move those section entries to their new offsets."""
        base = len(self.blob)
        self.blob += other.blob
        for entry in sections.values():
            entry[0] += base


def encode_stream(w: Writer, symbols: np.ndarray, bits: int, coding: str, sections: dict, key: str) -> float:
    """Store a symbol stream under ``key`` (and ``key + "_table"``); return the average coded bits per symbol."""
    if coding == "huffman":
        from ..compress.coding.huffman import huffman_encode

        lengths, payload, bit_length = huffman_encode(symbols, 1 << bits)
        used = int(np.flatnonzero(lengths)[-1]) + 1 if np.any(lengths) else 0
        sections[key + "_table"] = w.add(np.asarray(lengths[:used], np.uint8).tobytes())
        sections[key] = w.add(payload)
        return bit_length / max(symbols.size, 1)
    sections[key] = w.add(pack_fixed(symbols, bits))
    return float(bits)


# --------------------------------------------------------------------------- reading
def check_int(value: Any, lo: int, hi: int, what: str, where: str) -> int:
    """``value`` if it is an integer in ``[lo, hi]``, else a one-line :class:`FormatError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise FormatError(f"{where}: {what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def section_span(rec: dict, key: str, blob: memoryview, where: str) -> tuple[int, int]:
    """``(offset, length)`` of the section ``key`` of a record, checked against the blob (no checksum)."""
    sec = rec.get("sections", {}).get(key) if isinstance(rec.get("sections"), dict) else None
    if not isinstance(sec, list) or len(sec) != 3:
        raise FormatError(f"{where}: tensor '{rec.get('name')}' lacks section '{key}'")
    off = check_int(sec[0], 0, len(blob), "section offset", where)
    length = check_int(sec[1], 0, len(blob) - off, f"section '{key}' length", where)
    return off, length


def read_section(rec: dict, key: str, blob: memoryview, where: str) -> bytes:
    """The bytes of the section ``key`` of a record, their CRC-32 checked."""
    off, length = section_span(rec, key, blob, where)
    data = bytes(blob[off:off + length])
    if zlib.crc32(data) != rec["sections"][key][2]:
        raise FormatError(f"{where}: checksum mismatch in section '{key}' of '{rec.get('name')}' (corrupted file)")
    return data


def decode_stream(rec: dict, key: str, bits: int, count: int, blob: memoryview, where: str,
                  light: bool = False) -> tuple[np.ndarray, int, int]:
    """Read the symbol stream ``key`` of a record.

    Args:
        rec: the tensor record (its ``coding`` already checked).
        key: the stream's section name (``"index"`` or ``"values"``).
        bits: the width of a symbol (the alphabet is ``2^bits``).
        count: the number of symbols the stream must hold, exactly.
        blob: the file's sections.
        where: the path, for messages.
        light: decode Huffman streams with numpy alone (:func:`huffman_decode_numpy`)
            instead of the compiled decoder — same symbols, no numba or torch import.

    Returns:
        ``(symbols, stored_bytes, coded_bits)``: the symbols as ``int64``, the bytes the
        stream takes in the file (table included) and its meaningful bits.
    """
    payload = read_section(rec, key, blob, where)
    if rec["coding"] == "huffman":
        table = np.frombuffer(read_section(rec, key + "_table", blob, where), np.uint8)
        if table.size > (1 << bits):
            raise FormatError(f"{where}: Huffman table of '{rec['name']}' is larger than its alphabet")
        if light:
            decoder = huffman_decode_numpy
        else:
            from ..compress.coding.huffman import huffman_decode as decoder
        try:
            symbols = decoder(table, payload, count)
        except FormatError as e:
            raise FormatError(f"{where}: '{rec['name']}' {key} stream: {e}") from None
        used_bits = int(table[symbols].astype(np.int64).sum()) if symbols.size else 0
        if (used_bits + 7) // 8 != len(payload):       # the stream must hold exactly `count` symbols
            raise FormatError(f"{where}: '{rec['name']}' {key} stream holds {len(payload)} bytes, "
                              f"its {count} symbols need {(used_bits + 7) // 8}")
        return symbols.astype(np.int64), len(payload) + table.size, used_bits
    try:
        return unpack_fixed(payload, bits, count), len(payload), count * bits
    except FormatError as e:
        raise FormatError(f"{where}: '{rec['name']}' {key} stream: {e}") from None


def read_codebook(rec: dict, bits: int, symbols: np.ndarray, blob: memoryview, where: str) -> np.ndarray:
    """The codebook section (entry 0, the zero, implied), checked against the symbols that use it."""
    name = rec["name"]
    cb_bytes = read_section(rec, "codebook", blob, where)
    if len(cb_bytes) != 4 * ((1 << bits) - 1):
        raise FormatError(f"{where}: tensor '{name}' codebook has {len(cb_bytes)} bytes, expected {4 * ((1 << bits) - 1)}")
    codebook = np.concatenate([[0.0], np.frombuffer(cb_bytes, "<f4")]).astype(np.float32)
    if symbols.size and symbols.max() >= codebook.size:
        raise FormatError(f"{where}: tensor '{name}' uses a codebook index out of range")
    return codebook


# --------------------------------------------------------------------------- Huffman without numba
def huffman_decode_numpy(lengths: np.ndarray, payload: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols of a canonical Huffman stream with numpy and a short Python loop.

    The same code and the same checks as
    :func:`efficientdl.compress.coding.huffman.huffman_decode` (codewords handed out in
    ``(length, symbol)`` order, MSB first; the same one-line :class:`FormatError` for
    invalid lengths, an invalid codeword or a payload that ends early), without numba:
    a table indexed by the next ``T`` bits (``T`` = 10, or 16 for long streams) holds
    every run of whole codewords those bits begin with, so the loop takes several
    symbols per step; a codeword longer than ``T`` bits is resolved against the
    canonical ranges ``[first[l], first[l] + n_l)``.

    Args:
        lengths: code length of each symbol (a stored table, ``uint8``).
        payload: the packed codewords.
        count: the number of symbols to decode.

    Returns:
        ``int32`` array of ``count`` symbols.
    """
    arr = np.asarray(lengths).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > MAX_CODE_LENGTH_BITS):
        raise FormatError(f"Huffman code length outside 0..{MAX_CODE_LENGTH_BITS} bits")
    used_lengths = arr[arr > 0]
    if int(np.sum(np.left_shift(np.int64(1), MAX_CODE_LENGTH_BITS - used_lengths))) > (1 << MAX_CODE_LENGTH_BITS):
        raise FormatError("Huffman code lengths violate the Kraft inequality")
    if count < 0:
        raise FormatError("Huffman symbol count is negative")
    if count == 0:
        return np.zeros(0, np.int32)
    if arr.size == 0 or arr.max() == 0:
        raise FormatError("Huffman code lengths are all zero but symbols are expected")
    data = bytes(payload)
    total_bits = 8 * len(data)
    if count > total_bits:
        raise FormatError(f"Huffman payload of {len(data)} bytes cannot hold {count} symbols")
    # canonical code: first codeword, count and rank offset per length; symbols by (length, symbol)
    max_len = int(arr.max())
    bl_count = np.bincount(arr, minlength=MAX_CODE_LENGTH_BITS + 1)
    bl_count[0] = 0
    first, offset, code, off = [0] * (MAX_CODE_LENGTH_BITS + 1), [0] * (MAX_CODE_LENGTH_BITS + 1), 0, 0
    for length in range(1, MAX_CODE_LENGTH_BITS + 1):
        code = (code + int(bl_count[length - 1])) << 1
        first[length], offset[length] = code, off
        off += int(bl_count[length])
    symbols_used = np.flatnonzero(arr)
    order = symbols_used[np.lexsort((symbols_used, arr[symbols_used]))]
    codes = np.empty(arr.size, np.int64)
    ranks = np.arange(order.size) - np.searchsorted(arr[order], arr[order], side="left")
    codes[order] = np.asarray(first, np.int64)[arr[order]] + ranks
    # one-symbol table on T bits: symbol and length of the codeword the T bits begin with (length 0: none)
    t_bits = 16 if total_bits >= 1 << 16 else 10
    mask = (1 << t_bits) - 1
    sym1 = np.zeros(1 << t_bits, np.int64)
    len1 = np.zeros(1 << t_bits, np.int64)
    for s in order[arr[order] <= t_bits]:       # at most 2^T entries written in all (Kraft)
        span = 1 << (t_bits - int(arr[s]))
        start = int(codes[s]) << (t_bits - int(arr[s]))
        sym1[start:start + span], len1[start:start + span] = s, arr[s]
    # run table: row v (the next T bits) holds the whole codewords v begins with; row 2^T + s the
    # single symbol s (for codewords longer than T)
    rows = 1 << t_bits
    run_syms = np.zeros((rows + arr.size, t_bits), np.int32)
    run_n = np.zeros(rows + arr.size, np.int64)
    run_bits = np.zeros(rows + arr.size, np.int64)
    v = np.arange(rows, dtype=np.int64)
    active = np.ones(rows, bool)
    for k in range(t_bits):
        window = (v << run_bits[:rows]) & mask
        s, ln = sym1[window], len1[window]
        ok = active & (ln > 0) & (run_bits[:rows] + ln <= t_bits)
        run_syms[:rows, k] = np.where(ok, s, 0)
        run_bits[:rows] += np.where(ok, ln, 0)
        run_n[:rows] += ok
        active = ok
    run_syms[rows:, 0] = np.arange(arr.size)
    run_n[rows:] = 1
    run_bits[rows:] = arr
    run_n_list, run_bits_list = run_n.tolist(), run_bits.tolist()
    buf = data + bytes(8)                         # past the end the stream reads zeros, as the decoder does
    steps: list[int] = []
    pos = done = 0
    while done < count and pos <= total_bits:
        q = pos >> 3
        row = (int.from_bytes(buf[q:q + 4], "big") >> (32 - t_bits - (pos & 7))) & mask
        if not run_n_list[row]:                   # a codeword longer than T bits, or none at all
            window = (int.from_bytes(buf[q:q + 8], "big") >> (32 - (pos & 7))) & 0xFFFFFFFF
            row = -1
            for length in range(t_bits + 1, max_len + 1):
                d = (window >> (32 - length)) - first[length]
                if 0 <= d < int(bl_count[length]):
                    row = rows + int(order[offset[length] + d])
                    break
            if row < 0:
                raise FormatError(f"invalid Huffman codeword at symbol {done}")
        steps.append(row)
        pos += run_bits_list[row]
        done += run_n_list[row]
    idx = np.asarray(steps, np.int64)
    n = run_n[idx]
    symbols = run_syms[idx][np.arange(t_bits) < n[:, None]][:count]
    ends = np.cumsum(arr[symbols])
    if ends.size < count or ends[-1] > total_bits:
        raise FormatError(f"Huffman payload ended after {int(np.searchsorted(ends, total_bits, side='right'))} "
                          f"of {count} symbols")
    return symbols
