"""CPU kernel: sparse, codebook-indexed matrix products (the EIE datapath in software).

EIE (Han et al., ISCA'16) computes ``y = W a`` for a pruned, weight-shared ``W`` by
two rules: "0 × a = 0" (skip the columns of ``W`` whose input activation ``a_j`` is
zero) and "w × 0 = 0" (store and visit only the nonzero weights).  Each stored weight
is a small cluster index into a codebook, so the kernel streams a few bits per
weight instead of 32.

In-memory layout (:class:`PackedMatrix`), decoded once at load time:

* the ``R`` output rows are split into ``P`` contiguous partitions (one per thread;
  EIE's processing elements), ``row_start[p] ≤ r < row_start[p + 1]``;
* inside a partition the weights are stored column by column (CSC), so a zero
  activation skips a whole column: ``colptr[p, j] … colptr[p, j + 1]`` are the
  entries of column ``j`` in partition ``p``;
* every entry is one unsigned integer of ``entry_bits`` (8, 16 or 32) holding
  ``(delta << code_bits) | code``: ``code`` indexes the codebook (entry 0 is the
  zero weight) and ``delta`` is the number of zero rows skipped since the previous
  entry of the column — the relative index of Deep Compression Figure 2.  A gap wider
  than ``2^(entry_bits − code_bits) − 1`` is bridged by filler entries (code 0).

Each run (the entries of one column in one partition) is padded with code-0 entries to
a multiple of four (:func:`_pad_runs`), so the kernels' steps of four entries end the run
exactly, and the column kernel reads the four as one word (:attr:`PackedMatrix.words`).
Partition boundaries fall on whole cache lines of the output.  The column kernel
prefetches the run :data:`PREFETCH_COLUMNS` active columns ahead, since the jumps over
inactive columns defeat the hardware prefetcher.

Row of an entry: ``r = r_prev + delta + 1`` (``r_prev = row_start[p] − 1`` at the
top of a column).  The products are

    y[r, :] += codebook[code] · x[j, :]    for every entry of every active column j,

computed in parallel over partitions (no two threads write the same row).

A row-major twin (:func:`pack_rows`: the same format for ``Wᵀ``, one partition) lets
the row kernels compute ``y[r, :] = Σ codebook[code] · x[c, :]`` over the entries of
row ``r``, accumulating in registers instead of scattering; :func:`matmul` uses it for
several right-hand sides and for mostly-nonzero activations.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .vector import (vector_add, vector_fma, vector_load, vector_load_flat, vector_scale, vector_store,
                     vector_store_flat, vector_zeros)

ENTRY_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


@dataclass(frozen=True)
class PackedMatrix:
    """A pruned, weight-shared matrix in the kernel's layout (see the module docstring).

    Attributes:
        shape: ``(rows, cols)`` of the dense matrix ``W`` (``y = W x``).
        row_start: int64 ``(P + 1,)`` first row of each partition.
        colptr: int32 (int64 beyond 2^31 entries) ``(P, cols + 1)`` entry offsets of each column in each partition.
        entries: uint8/uint16/uint32 packed ``(delta << code_bits) | code``.
        code_bits: bits of the cluster index inside an entry.
        codebook: float32 ``(2^code_bits,)`` shared values; ``codebook[0] == 0``.
        absolute: entries hold ``(row << code_bits) | code`` with the row counted from the
            partition's first, not a zero run (the lookup twin of :func:`pack_rows`).
    """

    shape: tuple[int, int]
    row_start: np.ndarray
    colptr: np.ndarray
    entries: np.ndarray
    code_bits: int
    codebook: np.ndarray
    absolute: bool = False

    @property
    def entry_bits(self) -> int:
        return 8 * self.entries.itemsize

    @property
    def partitions(self) -> int:
        return self.row_start.size - 1

    @property
    def nbytes(self) -> int:
        """Resident bytes of the weights: entries + column pointers + row splits + codebook."""
        return self.entries.nbytes + self.colptr.nbytes + self.row_start.nbytes + self.codebook.nbytes

    @property
    def fillers(self) -> int:
        """Number of code-0 entries: those that bridge wide gaps and those that pad runs."""
        return int(self.entries.size - np.count_nonzero(self.entries & ((1 << self.code_bits) - 1)))

    @cached_property
    def words(self) -> np.ndarray:
        """The entries four to a word (uint32 for 8-bit entries, uint64 for 16-bit) when every
        run starts on a multiple of four entries, else an empty array.

        The column kernel then reads one word per step of four entries instead of four
        entries: measured on the EIE layers at batch 1, up to 1.1× faster (most with 16-bit
        entries).  Runs padded by :func:`pack` all start there unless a column had no zero
        row to pad with.
        """
        wide = {8: np.uint32, 16: np.uint64}.get(self.entry_bits)
        if (wide is None or self.absolute or sys.byteorder != "little"   # entry k is the word's lowest bits
                or self.entries.size % 4 or np.any(self.colptr % 4)):
            return np.zeros(0, np.uint32)
        return self.entries.view(wide)


#: column runs are padded to a multiple of this many entries (the kernels' unrolled step)
PAD_TO = 4

#: the lookup twin's table of products at most this large (see :func:`pack_rows`)
LOOKUP_TABLE_BYTES = 128 * 1024

#: partition boundaries fall on multiples of this many rows: 64 bytes, one cache line, of a
#: float32 output (two of float64) when the output starts on a line, as :func:`matmul`'s does
ALIGN_ROWS = 16
CACHE_LINE_BYTES = 64


def _entry_bits_choices(code_bits: int) -> list[int]:
    return [w for w in (8, 16, 32) if w - code_bits >= 2]


def pack(codes: np.ndarray, codebook: np.ndarray, partitions: int = 0, entry_bits: int = 0,
         visit_cost: float = 1.0, row_start: np.ndarray | None = None, pad_to: int = PAD_TO) -> PackedMatrix:
    """Pack a matrix of cluster indices into the kernel's layout.

    Args:
        codes: integer ``(rows, cols)``; ``codes[r, c]`` indexes ``codebook`` and 0
            means a pruned (zero) weight.
        codebook: float ``(K,)`` with ``codebook[0] == 0`` (padded to ``2^code_bits``).
        partitions: row partitions (threads); 0 means numba's thread count, capped so
            that every partition has at least one row.
        entry_bits: 8, 16 or 32, or 0 to choose the width that minimises
            ``entries × (bytes per entry + visit_cost)`` (memory plus the work of
            visiting an entry — fillers cost a visit).
        visit_cost: the cost of one visit in units of one byte of memory.  Measured on the
            EIE layers at batch 1: at 9% density, 16-bit entries without fillers ran
            1.04–1.2× faster than 8-bit ones with 22% fillers when the matrix was in cache
            (Alex-6, Alex-7; what ``visit_cost = 3`` would choose) but 1.15× slower from
            DRAM, where their 1.56× more bytes cost more than the visits saved; the default
            1 keeps the smaller layout.
        row_start: explicit partition boundaries (``P + 1`` increasing row numbers from 0
            to ``rows``; partitions may be empty), overriding ``partitions``.
        pad_to: pad every column run (the entries of one column in one partition) with
            code-0 entries to a multiple of this many entries, so the kernels' unrolled
            step ends each run with no remainder (see :func:`_pad_runs`); 1 pads nothing.

    Returns:
        The :class:`PackedMatrix`.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {codes.shape}")
    codebook = np.asarray(codebook, np.float32).ravel()
    if codebook.size == 0 or codebook[0] != 0:
        raise ValueError("codebook[0] must be the zero weight")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook.size):
        raise ValueError(f"codes must lie in [0, {codebook.size - 1}]")
    rows, cols = codes.shape
    code_bits = max(1, int(codebook.size - 1).bit_length())
    table = np.zeros(1 << code_bits, np.float32)
    table[:codebook.size] = codebook
    if row_start is not None:
        row_start = np.asarray(row_start, np.int64)
        if (row_start.ndim != 1 or row_start.size < 2 or row_start[0] != 0 or row_start[-1] != rows
                or np.any(np.diff(row_start) < 0)):
            raise ValueError(f"row_start must rise from 0 to {rows}")
        p_count = row_start.size - 1
    else:
        p_count = partitions or numba.get_num_threads()
        p_count = max(1, min(p_count, rows)) if rows else 1
        row_start = (np.arange(p_count + 1, dtype=np.int64) * rows) // p_count
        if rows >= ALIGN_ROWS * p_count:
            # boundaries on whole cache lines of the output: two threads writing rows of one
            # line make it bounce between their cores (measured: 1.2× slower on Alex-8)
            row_start[1:-1] = (row_start[1:-1] + ALIGN_ROWS // 2) // ALIGN_ROWS * ALIGN_ROWS

    r, c = np.nonzero(codes)
    part = np.searchsorted(row_start, r, side="right") - 1
    order = np.lexsort((r, c, part))
    r, c, part = r[order], c[order], part[order]
    code = codes[r, c].astype(np.int64)
    group = part * cols + c
    local = r - row_start[part]
    prev = np.empty_like(local)
    if local.size:
        prev[0] = -1
        prev[1:] = np.where(group[1:] == group[:-1], local[:-1], -1)
    gap = local - prev - 1

    choices = _entry_bits_choices(code_bits)
    if entry_bits:
        if entry_bits not in choices:
            raise ValueError(f"entry_bits must be one of {choices} for {code_bits}-bit codes")
        widths = [entry_bits]
    else:
        widths = choices
    best = None
    for w in widths:
        span = 1 << (w - code_bits)            # a filler advances this many rows
        n_fill = gap // span
        total = local.size + int(n_fill.sum())
        cost = total * (w // 8 + visit_cost)
        if best is None or cost < best[0]:
            best = (cost, w, span, n_fill, total)
    _, width, span, n_fill, total = best
    entries = np.empty(total, ENTRY_DTYPES[width])
    filler = (span - 1) << code_bits
    entries[:] = filler
    pos = np.arange(local.size) + np.cumsum(n_fill)
    entries[pos] = ((gap - n_fill * span) << code_bits) | code

    counts = np.bincount(group, weights=n_fill + 1, minlength=p_count * cols).astype(np.int64)
    offsets = np.zeros(p_count * cols + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if pad_to > 1 and local.size:
        # rows free after the last entry of each run, up to the end of its partition
        ends = np.append(np.flatnonzero(group[1:] != group[:-1]), local.size - 1)
        last = np.full(p_count * cols, -1, np.int64)
        last[group[ends]] = local[ends]
        part_rows = np.repeat(np.diff(row_start), cols)
        entries, offsets = _pad_runs(entries, offsets, part_rows - 1 - last, code_bits, pad_to)
        total = entries.size
    colptr = np.empty((p_count, cols + 1), np.int32 if total < 2**31 else np.int64)
    colptr[:, :cols] = offsets[:-1].reshape(p_count, cols)
    colptr[:, cols] = offsets[cols::cols][:p_count] if cols else 0
    return PackedMatrix((rows, cols), row_start, colptr, entries, code_bits, table)


def pack_rows(codes: np.ndarray, codebook: np.ndarray, entry_bits: int = 0, pad_to: int = PAD_TO,
              lookup: bool | None = None) -> PackedMatrix:
    """The row-major twin of :func:`pack`: ``W`` stored row by row (CSR).

    It is the column layout of ``Wᵀ`` with one partition: its ``colptr[0]`` is the row
    pointer of ``W``.  The row-major kernels accumulate each output in registers (no
    scatter), which is faster when most activations are nonzero or when there are many
    right-hand sides.  Two entry formats:

    * relative (as :func:`pack`): each entry's ``delta`` counts the zero columns skipped;
    * *lookup* (``absolute``): each entry is ``(column << code_bits) | code``, which is
      also the index of ``codebook[code] · x[column]`` in a table of ``C · 2^code_bits``
      products that the matrix-vector kernel builds per call.  A weight then costs one
      table load and one addition (measured 1.4–1.7× faster on NT-Wd and NT-LSTM); the
      table must stay near the core, so it is used when it takes at most
      :data:`LOOKUP_TABLE_BYTES` (NT-We's 256 KB table ran 1.2× slower) and when the entries
      fit in 16 bits, as wide as the relative ones would be.

    Args:
        codes, codebook: as for :func:`pack`.
        entry_bits: relative entries of this width (0: chosen by the cost model).
        pad_to: as for :func:`pack`.
        lookup: the lookup format (True), the relative one (False) or the rule above (None).

    Returns:
        A :class:`PackedMatrix` of shape ``(cols, rows)``.
    """
    codes = np.asarray(codes)
    # the row kernel is compute-bound: a filler costs far more than a byte (measured: 16-bit
    # entries without fillers run 20% faster than 8-bit ones with 18% fillers)
    relative = pack(codes.T, codebook, partitions=1, entry_bits=entry_bits, visit_cost=8.0, pad_to=pad_to)
    cols = codes.shape[1] if codes.ndim == 2 else 0
    fits = (cols << relative.code_bits) <= 1 << 16
    if lookup is None:
        lookup = (not entry_bits and relative.entry_bits >= 16 and fits
                  and (cols << relative.code_bits) * 4 <= LOOKUP_TABLE_BYTES)
    if not lookup:
        return relative
    if not fits:
        raise ValueError(f"lookup entries need cols · 2^code_bits ≤ 65536, got {cols} columns")
    r, c = np.nonzero(codes)                     # row-major: by row, then column
    counts = np.bincount(r, minlength=codes.shape[0]).astype(np.int64)
    padded = counts + (-counts) % max(1, pad_to)  # filler 0 = column 0, code 0: adds codebook[0] · x[0] = 0
    rowptr = np.zeros(codes.shape[0] + 1, np.int64)
    np.cumsum(padded, out=rowptr[1:])
    first = np.cumsum(counts) - counts
    entries = np.zeros(int(rowptr[-1]), np.uint16)
    entries[rowptr[r] + np.arange(r.size) - first[r]] = (c << relative.code_bits) | codes[r, c]
    pointer_type = np.int32 if rowptr[-1] < 2**31 else np.int64
    return PackedMatrix((cols, codes.shape[0]), np.array([0, cols], np.int64), rowptr[None, :].astype(pointer_type),
                        entries, relative.code_bits, relative.codebook, absolute=True)


#: layers with more columns than this get a column-blocked twin (:func:`pack_row_blocks`).  At 64
#: float32 right-hand sides 512 columns of ``x`` take 128 KiB, well inside a core's L2; measured
#: on the EIE layers (Zen 3), blocking made the 64-column product 1.3–2.3× faster than whole
#: rows on the layers with 4,096 or more columns
BLOCK_COLUMNS = 512

#: a block is cut so that each output row holds about this many stored weights in it
#: (:func:`block_columns_for`)
BLOCK_ENTRIES_PER_ROW = 32


def block_columns_for(density: float) -> int:
    """Columns per block of :func:`pack_row_blocks` for a matrix of weight density ``density``.

    Narrow blocks keep their rows of ``x`` in the L1 cache; wide ones spread the per-block
    cost of each output row (reading and writing its tile of ``y``) over more weights.  The
    width is the power of two nearest above ``BLOCK_ENTRIES_PER_ROW / density``, within
    128 … 1024.  Measured with the vector row kernel at 64 right-hand sides (AMD Zen 5, two
    runs): Alex-8 (25% dense) ran fastest in blocks of 128 (1.2–1.3× faster than 512), VGG-7
    (4%) in blocks of 1024 (1.08–1.10× faster than 512); NT-We (10%), given 512 by the rule,
    ran 1.01–1.12× faster at 1024.

    Args:
        density: stored weights / (rows · cols), in (0, 1].

    Returns:
        The block width in columns.
    """
    want = BLOCK_ENTRIES_PER_ROW / max(float(density), 1e-9)
    width = 128
    while width < want and width < 1024:
        width *= 2
    return width


@dataclass(frozen=True)
class RowBlocks:
    """The row-major twin of ``W`` cut into blocks of columns (:func:`pack_row_blocks`).

    Attributes:
        shape: ``(rows, cols)`` of ``W``.
        bounds: int64 ``(K + 1,)`` first column of each block (and ``cols``).
        blocks: ``K`` row-major twins (:func:`pack_rows`), block ``k`` of ``W[:, bounds[k]:bounds[k+1]]``.
    """

    shape: tuple[int, int]
    bounds: np.ndarray
    blocks: tuple[PackedMatrix, ...]

    @property
    def nbytes(self) -> int:
        return int(self.bounds.nbytes) + sum(b.nbytes for b in self.blocks)


def pack_row_blocks(codes: np.ndarray, codebook: np.ndarray, block_columns: int | None = None) -> RowBlocks:
    """``W`` row by row within blocks of ``block_columns`` columns: cache blocking for ``W · X``.

    The sparse × dense product with many right-hand sides reads, for every stored weight
    ``W_rc``, the row ``X[c, :]`` (256 bytes at 64 float32 columns).  Over the whole width of
    a large layer (VGG-6: 25,088 columns, 6.4 MB of ``X``) those reads come from the last-level
    cache; within one block they stay in the core's own caches, and ``Y`` is summed over the
    blocks (the cache blocking of sparse kernels, Im, Yelick & Vuduc, IJHPCA'04 "Sparsity").

    Args:
        codes, codebook: as for :func:`pack` (``codes`` of shape ``(rows, cols)``).
        block_columns: columns per block (the last may be narrower); ``None``: by the weight
            density (:func:`block_columns_for`).

    Returns:
        A :class:`RowBlocks`; its bytes come on top of the column layout and the twin.
    """
    codes = np.asarray(codes)
    if block_columns is None and codes.ndim == 2:
        block_columns = block_columns_for(np.count_nonzero(codes) / max(1, codes.size))
    if codes.ndim != 2 or block_columns < 1:
        raise ValueError(f"codes must be 2-D and block_columns ≥ 1, got shape {codes.shape}, {block_columns}")
    cols = codes.shape[1]
    bounds = np.array(list(range(0, cols, block_columns)) + [cols], np.int64)
    blocks = tuple(pack_rows(np.ascontiguousarray(codes[:, a:b]), codebook) for a, b in zip(bounds[:-1], bounds[1:]))
    return RowBlocks(tuple(codes.shape), bounds, blocks)


@numba.njit(cache=True)
def _pad_runs(entries, offsets, tail_rows, code_bits, multiple):  # pragma: no cover - compiled
    """Pad every run of entries to a multiple of ``multiple`` entries without moving a weight.

    A run of ``n`` entries gets ``(−n) mod multiple`` code-0 entries (they add 0 to
    some row), taken first from the ``tail_rows[s]`` free rows after its last entry
    (each a filler of zero run 0), then by splitting the zero runs of its entries from
    the front: ``(delta, code)`` becomes ``(0, 0), (delta − 1, code)``, which keeps
    ``code`` on its row.  A run with fewer free rows than it needs (a nearly dense
    column) is left as it is; the kernels' remainder loop handles it.

    Why: the kernels step four entries at a time and finish a run entry by entry.  With
    runs of random length that remainder loop's branches were mispredicted once or twice
    per run; on the EIE layers, runs cut to multiples of four ran 1.03–1.27× faster per
    entry visited, while padding adds 1.5 entries per run on average (0.6–2% of them).

    Returns:
        ``(entries, offsets)`` of the padded runs.
    """
    shift = np.uint64(code_bits)
    mask = np.uint64((1 << code_bits) - 1)
    runs = offsets.size - 1
    pads = np.zeros(runs, np.int64)
    for s in range(runs):
        count = offsets[s + 1] - offsets[s]
        pad = (multiple - count % multiple) % multiple
        room = tail_rows[s] if count else 0
        if pad > room:
            for k in range(offsets[s], offsets[s + 1]):
                room += np.int64(np.uint64(entries[k]) >> shift)
        pads[s] = pad if pad <= room else 0
    new_offsets = np.zeros(runs + 1, np.int64)
    for s in range(runs):
        new_offsets[s + 1] = new_offsets[s] + offsets[s + 1] - offsets[s] + pads[s]
    out = np.zeros(new_offsets[runs], entries.dtype)     # 0 is the filler (0, 0)
    for s in range(runs):
        pos = new_offsets[s]
        split = max(0, pads[s] - tail_rows[s])            # fillers taken from zero runs
        for k in range(offsets[s], offsets[s + 1]):
            e = np.uint64(entries[k])
            delta = e >> shift
            while split > 0 and delta > 0:
                pos += 1                                   # out[pos] stays the (0, 0) filler
                delta -= np.uint64(1)
                split -= 1
            out[pos] = (delta << shift) | (e & mask)
            pos += 1
        # the rest of the run, up to new_offsets[s + 1], stays (0, 0): tail fillers
    return out, new_offsets


def unpack(m: PackedMatrix) -> np.ndarray:
    """The dense ``(rows, cols)`` matrix of cluster indices (for tests and conversions)."""
    out = np.zeros(m.shape, np.int64)
    _unpack(m.row_start, m.colptr, m.entries, m.code_bits, m.absolute, out)
    return out


@numba.njit(cache=True)
def _unpack(row_start, colptr, entries, code_bits, absolute, out):  # pragma: no cover - compiled
    mask = (1 << code_bits) - 1
    for p in range(row_start.size - 1):
        for j in range(colptr.shape[1] - 1):
            row = row_start[p] - 1
            for k in range(colptr[p, j], colptr[p, j + 1]):
                e = np.int64(entries[k])
                if absolute:
                    row = row_start[p] + (e >> code_bits)
                else:
                    row += (e >> code_bits) + 1
                code = e & mask
                if code:
                    out[row, j] = code


# The kernels index with unsigned integers — rows, columns, codes and entry positions: numba
# then emits no negative-index wraparound (a compare and a select per access, which made the
# loops 1.5–2× slower).

@numba.njit(inline="always")
def _decode4(entries, k, shift, mask, one):  # pragma: no cover - compiled
    """Codes of entries ``k … k+3`` and their positions relative to the one before ``k``.

    The offsets are summed among themselves, off the loop-carried position, so a
    step of four entries adds one dependent addition to the position.
    """
    return _codes_and_offsets(np.uint64(entries[k]), np.uint64(entries[k + one]),
                              np.uint64(entries[k + np.uint64(2)]), np.uint64(entries[k + np.uint64(3)]),
                              shift, mask, one)


@numba.njit(inline="always")
def _decode_word(w, bits, emask, shift, mask, one):  # pragma: no cover - compiled
    """:func:`_decode4` of the four entries packed in the word ``w`` (``bits`` each, lowest first)."""
    return _codes_and_offsets(w & emask, (w >> bits) & emask, (w >> (bits + bits)) & emask,
                              w >> (bits + bits + bits), shift, mask, one)


@numba.njit(inline="always")
def _codes_and_offsets(e0, e1, e2, e3, shift, mask, one):  # pragma: no cover - compiled
    """Codes of four consecutive entries and their positions relative to the one before."""
    d0 = (e0 >> shift) + one
    d1 = d0 + (e1 >> shift) + one
    d2 = d1 + (e2 >> shift) + one
    d3 = d2 + (e3 >> shift) + one
    return e0 & mask, e1 & mask, e2 & mask, e3 & mask, d0, d1, d2, d3


@intrinsic
def _prefetch(typingctx, array, index):  # pragma: no cover - compiled
    """Hint the CPU to load the cache line of ``array[index]`` (LLVM's ``llvm.prefetch``:
    a read, kept in all cache levels); no effect on results."""
    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        view = context.make_array(array_type)(context, builder, args[0])
        position = context.cast(builder, args[1], index_type, types.intp)
        address = cgutils.get_item_pointer(context, builder, array_type, view, [position], wraparound=False)
        i32 = llvm_ir.IntType(32)
        if getattr(address.type, "is_opaque", False):
            name = "llvm.prefetch.p0"
        else:                                    # LLVM with typed pointers
            address = builder.bitcast(address, llvm_ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0i8"
        hint = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [address.type, i32, i32, i32]), name)
        builder.call(hint, [address, llvm_ir.Constant(i32, 0), llvm_ir.Constant(i32, 3), llvm_ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


#: the column kernel asks for the entries of the run this many active columns ahead.  From
#: DRAM (the benchmark's *cold* regime) that made it 1.3–2.6× faster on the EIE layers:
#: the hardware prefetcher cannot guess the jumps over inactive columns; in cache, ±2%.
PREFETCH_COLUMNS = 8


# Each kernel is a function for one partition (or one range of rows) called by two drivers:
# one runs the partitions on threads, the other serially, for small products where waking
# the thread pool costs more than the work.  How the function joins its drivers was chosen
# by measurement on the EIE layers: the column kernels are compiled once and called (inlined
# into the parallel loop they ran 1.05–1.2× slower), the row kernels are inlined into each
# driver (called, they ran 1.05–1.08× slower at batch 1 and 1.2× at batch 64).

@numba.njit(fastmath=True, cache=True)
def _spmv_partition(p, active, row_start, colptr, entries, words, code_bits, codebook, x, y):  # pragma: no cover - compiled
    mask = np.uint64((1 << code_bits) - 1)
    shift = np.uint64(code_bits)
    one = np.uint64(1)
    two = np.uint64(2)
    four = np.uint64(4)
    bits = np.uint64(8 * entries.itemsize)
    emask = (one << bits) - one
    line = np.uint64(CACHE_LINE_BYTES // entries.itemsize)
    scaled = np.empty(codebook.size, codebook.dtype)
    r0 = np.uint64(row_start[p]) - one           # wraps to 2^64 − 1 for row 0; the first step adds ≥ 1
    ptr = colptr[p]
    n_active = active.size
    for t in range(n_active):
        if t + PREFETCH_COLUMNS < n_active:      # the run PREFETCH_COLUMNS active columns ahead
            ahead = np.uint64(active[t + PREFETCH_COLUMNS])
            k = np.uint64(ptr[ahead])
            end = np.uint64(ptr[ahead + one])
            while k < end:
                _prefetch(entries, k)
                k += line
        j = np.uint64(active[t])
        a = x[j]
        for q in range(codebook.size):           # the codebook times this activation
            scaled[q] = codebook[q] * a
        row = r0
        k = np.uint64(ptr[j])
        end = np.uint64(ptr[j + one])
        if words.size:                           # whole words of four entries
            for w in range(k >> two, end >> two):
                q0, q1, q2, q3, d0, d1, d2, d3 = _decode_word(np.uint64(words[w]), bits, emask, shift, mask, one)
                y[row + d0] += scaled[q0]
                y[row + d1] += scaled[q1]
                y[row + d2] += scaled[q2]
                y[row + d3] += scaled[q3]
                row += d3
            continue
        while k + four <= end:                   # unrolled by four
            q0, q1, q2, q3, d0, d1, d2, d3 = _decode4(entries, k, shift, mask, one)
            y[row + d0] += scaled[q0]
            y[row + d1] += scaled[q1]
            y[row + d2] += scaled[q2]
            y[row + d3] += scaled[q3]
            row += d3
            k += four
        while k < end:
            e = np.uint64(entries[k])
            row += (e >> shift) + one
            y[row] += scaled[e & mask]
            k += one


@numba.njit(parallel=True, cache=True)
def _spmv_parallel(row_start, colptr, entries, words, code_bits, codebook, x, y):  # pragma: no cover - compiled
    active = np.flatnonzero(x)                   # 0 × a = 0: only nonzero activations
    for p in prange(row_start.size - 1):
        _spmv_partition(p, active, row_start, colptr, entries, words, code_bits, codebook, x, y)


@numba.njit(cache=True)
def _spmv_serial(row_start, colptr, entries, words, code_bits, codebook, x, y):  # pragma: no cover - compiled
    active = np.flatnonzero(x)
    for p in range(row_start.size - 1):
        _spmv_partition(p, active, row_start, colptr, entries, words, code_bits, codebook, x, y)


@numba.njit(cache=True)
def _active_columns(x):  # pragma: no cover - compiled
    """Indices of the rows of ``x`` (C, N) with a nonzero sample: a column of ``W`` is skipped
    when all samples are 0."""
    cols, n = x.shape
    keep = np.zeros(cols, np.bool_)
    for j in range(cols):
        for b in range(n):
            if x[j, b] != 0:
                keep[j] = True
                break
    return np.flatnonzero(keep)


@numba.njit(fastmath=True, cache=True)
def _spmm_partition(p, active, row_start, colptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    mask = np.uint64((1 << code_bits) - 1)
    shift = np.uint64(code_bits)
    one = np.uint64(1)
    n = x.shape[1]
    r0 = np.uint64(row_start[p]) - one
    ptr = colptr[p]
    for t in range(active.size):
        j = np.uint64(active[t])
        row = r0
        for k in range(np.uint64(ptr[j]), np.uint64(ptr[j + one])):
            e = np.uint64(entries[k])
            row += (e >> shift) + one
            w = codebook[e & mask]
            for b in range(n):
                y[row, b] += w * x[j, b]


@numba.njit(parallel=True, cache=True)
def _spmm_parallel(row_start, colptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    active = _active_columns(x)
    for p in prange(row_start.size - 1):
        _spmm_partition(p, active, row_start, colptr, entries, code_bits, codebook, x, y)


@numba.njit(cache=True)
def _spmm_serial(row_start, colptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    active = _active_columns(x)
    for p in range(row_start.size - 1):
        _spmm_partition(p, active, row_start, colptr, entries, code_bits, codebook, x, y)


#: the row kernels' float flags: fused multiply-add, but sums in the order written.  With
#: reassociation allowed (``fastmath=True``) LLVM may turn independent accumulators into
#: AVX-512 gathers, no faster than scalar loads on the machine we measured on (0.23 ns per
#: element either way).  Contract-only with eight accumulators ran 1.04–1.14× faster at
#: batch 1 on the NT layers, and contract-only 1.01–1.10× faster at batch 64.
_ROWS_FASTMATH = {"contract"}


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_mv_range(first, last, rowptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    """Rows ``first … last − 1`` of the matrix-vector product from the row-major twin.

    Eight accumulators (four left the fused multiply-adds' latency on the critical path).
    It reads entry by entry: reading whole words of four (as the column kernel does) made
    it 1.08–1.19× slower on the NT layers."""
    mask = np.uint64((1 << code_bits) - 1)
    shift = np.uint64(code_bits)
    one = np.uint64(1)
    four = np.uint64(4)
    eight = np.uint64(8)
    for r in range(np.uint64(first), np.uint64(last)):
        acc0 = codebook[0]                       # the exact zero, in x's dtype
        acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = acc0
        col = np.uint64(0) - one                 # wraps; the first step adds ≥ 1
        k = np.uint64(rowptr[r])
        end = np.uint64(rowptr[r + one])
        while k + eight <= end:
            q0, q1, q2, q3, d0, d1, d2, d3 = _decode4(entries, k, shift, mask, one)
            q4, q5, q6, q7, d4, d5, d6, d7 = _decode4(entries, k + four, shift, mask, one)
            c3 = col + d3
            acc0 += codebook[q0] * x[col + d0]
            acc1 += codebook[q1] * x[col + d1]
            acc2 += codebook[q2] * x[col + d2]
            acc3 += codebook[q3] * x[c3]
            acc4 += codebook[q4] * x[c3 + d4]
            acc5 += codebook[q5] * x[c3 + d5]
            acc6 += codebook[q6] * x[c3 + d6]
            acc7 += codebook[q7] * x[c3 + d7]
            col = c3 + d7
            k += eight
        if k + four <= end:                      # a padded run ends with at most one step of four
            q0, q1, q2, q3, d0, d1, d2, d3 = _decode4(entries, k, shift, mask, one)
            acc0 += codebook[q0] * x[col + d0]
            acc1 += codebook[q1] * x[col + d1]
            acc2 += codebook[q2] * x[col + d2]
            acc3 += codebook[q3] * x[col + d3]
            col += d3
            k += four
        while k < end:
            e = np.uint64(entries[k])
            col += (e >> shift) + one
            acc0 += codebook[e & mask] * x[col]
            k += one
        y[r] = ((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7))


@numba.njit(inline="always")
def _next_column(e, col, shift, one, absolute):  # pragma: no cover - compiled
    """The column of entry ``e`` after the one at ``col``: named outright (lookup twin) or relative."""
    if absolute:
        return e >> shift
    return col + (e >> shift) + one


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_tile64(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y):  # pragma: no cover - compiled
    """``y[r, b0:b0+64] += Σ_k codebook[code_k] · x[col_k, b0:b0+64]`` in four vector registers.

    One pass over the row's entries; per entry four vector loads and fused multiply-adds.
    Four independent accumulators cover the multiply-add latency; a second set over
    alternate entries measured no faster (0.97–1.04× on six EIE layers, AMD Zen 5)."""
    a0 = vector_zeros(y, 16)
    a1 = a2 = a3 = a0
    col = np.uint64(0) - one
    for k in range(start, end):
        e = np.uint64(entries[k])
        col = _next_column(e, col, shift, one, absolute)
        w = codebook[e & mask]
        a0 = vector_fma(a0, w, vector_load(x, col, b0, 16))
        a1 = vector_fma(a1, w, vector_load(x, col, b0 + 16, 16))
        a2 = vector_fma(a2, w, vector_load(x, col, b0 + 32, 16))
        a3 = vector_fma(a3, w, vector_load(x, col, b0 + 48, 16))
    vector_store(y, r, b0, vector_add(vector_load(y, r, b0, 16), a0))
    vector_store(y, r, b0 + 16, vector_add(vector_load(y, r, b0 + 16, 16), a1))
    vector_store(y, r, b0 + 32, vector_add(vector_load(y, r, b0 + 32, 16), a2))
    vector_store(y, r, b0 + 48, vector_add(vector_load(y, r, b0 + 48, 16), a3))


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_tile(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y, lanes):  # pragma: no cover - compiled
    """``y[r, b0:b0+lanes] += Σ_k codebook[code_k] · x[col_k, b0:b0+lanes]`` in one vector
    width, four accumulators over consecutive entries (one register's multiply-add chain
    would wait out its latency at every entry)."""
    a0 = vector_zeros(y, lanes)
    a1 = a2 = a3 = a0
    col = np.uint64(0) - one
    k = start
    while k + np.uint64(4) <= end:
        e0 = np.uint64(entries[k])
        e1 = np.uint64(entries[k + one])
        e2 = np.uint64(entries[k + np.uint64(2)])
        e3 = np.uint64(entries[k + np.uint64(3)])
        c0 = _next_column(e0, col, shift, one, absolute)
        c1 = _next_column(e1, c0, shift, one, absolute)
        c2 = _next_column(e2, c1, shift, one, absolute)
        col = _next_column(e3, c2, shift, one, absolute)
        a0 = vector_fma(a0, codebook[e0 & mask], vector_load(x, c0, b0, lanes))
        a1 = vector_fma(a1, codebook[e1 & mask], vector_load(x, c1, b0, lanes))
        a2 = vector_fma(a2, codebook[e2 & mask], vector_load(x, c2, b0, lanes))
        a3 = vector_fma(a3, codebook[e3 & mask], vector_load(x, col, b0, lanes))
        k += np.uint64(4)
    while k < end:
        e0 = np.uint64(entries[k])
        col = _next_column(e0, col, shift, one, absolute)
        a0 = vector_fma(a0, codebook[e0 & mask], vector_load(x, col, b0, lanes))
        k += one
    total = vector_add(vector_add(a0, a1), vector_add(a2, a3))
    vector_store(y, r, b0, vector_add(vector_load(y, r, b0, lanes), total))


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_mm_tiles(first, last, rowptr, entries, code_bits, absolute, codebook, x, y):  # pragma: no cover - compiled
    """Rows ``first … last − 1`` of ``y += W x`` (several right-hand sides) from the row-major
    twin, relative or lookup (``absolute``) entries.

    Each output row is computed in tiles of its columns held in vector registers
    (:mod:`efficientdl.kernels.vector`): 64, then 16, 8 and 4 at a time, the last
    ``n mod 4`` one by one.  With rows of ``x`` and ``y`` that are not contiguous, all of it
    one by one.  Written as plain loops over the right-hand sides, this product stayed scalar
    (LLVM did not vectorise it): the tiles ran it 1.3–1.5× faster on the EIE layers at 64
    right-hand sides (AMD Zen 5, AVX-512)."""
    mask = np.uint64((1 << code_bits) - 1)
    shift = np.uint64(code_bits)
    one = np.uint64(1)
    n = x.shape[1]
    contiguous = x.strides[1] == x.itemsize and y.strides[1] == y.itemsize
    tiled = n - n % 4 if contiguous else 0
    for r in range(np.uint64(first), np.uint64(last)):
        start = np.uint64(rowptr[r])
        end = np.uint64(rowptr[r + one])
        b0 = 0
        while b0 + 64 <= tiled:
            _rows_tile64(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y)
            b0 += 64
        while b0 + 16 <= tiled:
            _rows_tile(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y, 16)
            b0 += 16
        if b0 + 8 <= tiled:
            _rows_tile(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y, 8)
            b0 += 8
        if b0 + 4 <= tiled:
            _rows_tile(r, b0, start, end, absolute, entries, shift, mask, one, codebook, x, y, 4)
            b0 += 4
        for b in range(b0, n):                   # the last n mod 4 columns (all of them if not contiguous)
            acc = codebook[0]
            col = np.uint64(0) - one
            for k in range(start, end):
                e = np.uint64(entries[k])
                col = _next_column(e, col, shift, one, absolute)
                acc += codebook[e & mask] * x[col, b]
            y[r, b] += acc


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_mm_range(first, last, rowptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    """Rows ``first … last − 1`` of ``y += W x`` from the relative row-major twin (:func:`_rows_mm_tiles`)."""
    _rows_mm_tiles(first, last, rowptr, entries, code_bits, False, codebook, x, y)


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _lookup_table(first, last, code_bits, codebook, x, table):  # pragma: no cover - compiled
    """Columns ``first … last − 1`` of the lookup twin's table:
    ``table[(c << code_bits) | q] = codebook[q] · x[c]``, one cache line per column.

    A full codebook of 8 or a multiple of 16 values is scaled as vectors (:mod:`.vector`):
    written as a loop over the codes it stayed scalar, and building LeNet-300-100's
    first table (784 columns × 16 codes) took 4.5 µs, two fifths of its product (Zen 5)."""
    size = 1 << code_bits
    if codebook.size == size and size % 16 == 0 and codebook.flags.c_contiguous and table.flags.c_contiguous:
        for c in range(first, last):
            base = c << code_bits
            a = x[c]
            for q in range(0, size, 16):
                vector_store_flat(table, base + q, vector_scale(a, vector_load_flat(codebook, q, 16)))
    elif codebook.size == size and size == 8 and codebook.flags.c_contiguous and table.flags.c_contiguous:
        for c in range(first, last):
            vector_store_flat(table, c << code_bits, vector_scale(x[c], vector_load_flat(codebook, 0, 8)))
    else:
        for c in range(first, last):
            base = c << code_bits
            a = x[c]
            for q in range(codebook.size):
                table[base + q] = codebook[q] * a


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_lookup_range(first, last, rowptr, entries, codebook, table, y):  # pragma: no cover - compiled
    """Rows ``first … last − 1`` of the matrix-vector product from the lookup twin: each
    entry is the index of its product in ``table``, so a weight costs a load and an add."""
    one = np.uint64(1)
    four = np.uint64(4)
    eight = np.uint64(8)
    for r in range(np.uint64(first), np.uint64(last)):
        acc0 = codebook[0]                       # the exact zero in x's dtype (float32 stays float32)
        acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = acc0
        k = np.uint64(rowptr[r])
        end = np.uint64(rowptr[r + one])
        while k + eight <= end:
            acc0 += table[np.uint64(entries[k])]
            acc1 += table[np.uint64(entries[k + one])]
            acc2 += table[np.uint64(entries[k + np.uint64(2)])]
            acc3 += table[np.uint64(entries[k + np.uint64(3)])]
            acc4 += table[np.uint64(entries[k + np.uint64(4)])]
            acc5 += table[np.uint64(entries[k + np.uint64(5)])]
            acc6 += table[np.uint64(entries[k + np.uint64(6)])]
            acc7 += table[np.uint64(entries[k + np.uint64(7)])]
            k += eight
        if k + four <= end:
            acc0 += table[np.uint64(entries[k])]
            acc1 += table[np.uint64(entries[k + one])]
            acc2 += table[np.uint64(entries[k + np.uint64(2)])]
            acc3 += table[np.uint64(entries[k + np.uint64(3)])]
            k += four
        while k < end:
            acc0 += table[np.uint64(entries[k])]
            k += one
        y[r] = ((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7))


@numba.njit(inline="always")
def _on_cache_line(raw, nbytes, like):  # pragma: no cover - compiled
    """The ``nbytes`` of the byte buffer ``raw`` (``nbytes`` + one line long) that start on a
    cache line, viewed as ``like``'s dtype."""
    skip = (CACHE_LINE_BYTES - raw.ctypes.data % CACHE_LINE_BYTES) % CACHE_LINE_BYTES
    return raw[skip:skip + nbytes].view(like.dtype)


@numba.njit(inline="always")
def _table_on_cache_lines(size, like):  # pragma: no cover - compiled
    """An uninitialised array of ``size`` elements of ``like``'s dtype starting on a cache
    line, so each column of the lookup table (16 float32 products for 4-bit codes) fills
    one line instead of straddling two."""
    nbytes = size * like.itemsize
    return _on_cache_line(np.empty(nbytes + CACHE_LINE_BYTES, np.uint8), nbytes, like)


@numba.njit(parallel=True, fastmath=_ROWS_FASTMATH, cache=True)
def _rows_lookup_mv_parallel(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    cols = x.size
    table = _table_on_cache_lines(cols << code_bits, x)
    for p in prange(chunks):
        _lookup_table(p * cols // chunks, (p + 1) * cols // chunks, code_bits, codebook, x, table)
    rows = rowptr.size - 1
    for p in prange(chunks):
        _rows_lookup_range(p * rows // chunks, (p + 1) * rows // chunks, rowptr, entries, codebook, table, y)


@numba.njit(fastmath=_ROWS_FASTMATH, cache=True)
def _rows_lookup_mv_serial(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    table = _table_on_cache_lines(x.size << code_bits, x)
    _lookup_table(0, x.size, code_bits, codebook, x, table)
    _rows_lookup_range(0, rowptr.size - 1, rowptr, entries, codebook, table, y)


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _rows_absolute_mm_range(first, last, rowptr, entries, code_bits, codebook, x, y):  # pragma: no cover - compiled
    """:func:`_rows_mm_range` for the lookup twin: each entry names its column outright."""
    _rows_mm_tiles(first, last, rowptr, entries, code_bits, True, codebook, x, y)


@numba.njit(parallel=True, fastmath=_ROWS_FASTMATH, cache=True)
def _rows_absolute_mm_parallel(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    rows = rowptr.size - 1
    for p in prange(chunks):
        _rows_absolute_mm_range(p * rows // chunks, (p + 1) * rows // chunks, rowptr, entries, code_bits, codebook, x, y)


@numba.njit(fastmath=_ROWS_FASTMATH, cache=True)
def _rows_absolute_mm_serial(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    _rows_absolute_mm_range(0, rowptr.size - 1, rowptr, entries, code_bits, codebook, x, y)


@numba.njit(parallel=True, fastmath=_ROWS_FASTMATH, cache=True)
def _rows_mv_parallel(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    rows = rowptr.size - 1
    for p in prange(chunks):
        _rows_mv_range(p * rows // chunks, (p + 1) * rows // chunks, rowptr, entries, code_bits, codebook, x, y)


@numba.njit(fastmath=_ROWS_FASTMATH, cache=True)
def _rows_mv_serial(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    _rows_mv_range(0, rowptr.size - 1, rowptr, entries, code_bits, codebook, x, y)


@numba.njit(parallel=True, fastmath=_ROWS_FASTMATH, cache=True)
def _rows_mm_parallel(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    rows = rowptr.size - 1
    for p in prange(chunks):
        _rows_mm_range(p * rows // chunks, (p + 1) * rows // chunks, rowptr, entries, code_bits, codebook, x, y)


@numba.njit(fastmath=_ROWS_FASTMATH, cache=True)
def _rows_mm_serial(rowptr, entries, code_bits, codebook, x, y, chunks):  # pragma: no cover - compiled
    _rows_mm_range(0, rowptr.size - 1, rowptr, entries, code_bits, codebook, x, y)


#: with a row-major twin, a matrix-vector product uses it when more than this share of the
#: activations is nonzero (the column kernel pays a scatter per visited entry, about twice
#: the row kernel's gather; measured on the EIE layers)
ROWS_ABOVE_DENSITY = 0.5

#: products that visit fewer entries (× right-hand sides) than this run on one thread
SERIAL_WORK = 1 << 15

#: the row kernels split the rows into this many contiguous chunks, numba's most threads;
#: its scheduler deals them out to however many threads are set (``numba.set_num_threads``),
#: so the count need not be asked for per call (10 µs with a cold cache)
ROW_CHUNKS = numba.config.NUMBA_NUM_THREADS


@numba.njit(cache=True)
def _count_nonzero(x):  # pragma: no cover - compiled
    """``np.count_nonzero`` of a float vector: compiled, it takes 0.25 µs where numpy's takes
    1.8 µs on 4,096 values — a share of a small layer's product."""
    count = 0
    for i in range(x.size):
        if x[i] != 0:
            count += 1
    return count


def empty_on_cache_lines(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element starts a 64-byte cache line.

    For inputs the kernels read row by row in vectors: a vector load that straddles two
    lines costs two (numpy aligns its own arrays to 16 bytes only).

    Args:
        shape: the array's shape.
        dtype: its numpy dtype.

    Returns:
        The array (a view of a slightly larger byte buffer).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + CACHE_LINE_BYTES, np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE_BYTES
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


@numba.njit(cache=True)
def _zeros_on_cache_lines(shape, like):  # pragma: no cover - compiled
    """A zero array of ``shape`` and ``like``'s dtype whose first element starts a cache
    line (see :data:`ALIGN_ROWS`).

    Compiled, because in Python the address arithmetic took ~25 µs whenever the
    interpreter's own data was out of the cache (the benchmark's *cold* regime), as much
    as the product it served."""
    nbytes = like.itemsize
    for size in shape:
        nbytes *= size
    return _on_cache_line(np.zeros(nbytes + CACHE_LINE_BYTES, np.uint8), nbytes, like).reshape(shape)


@numba.njit(inline="always")
def _matvec_into(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                 row_lookup, x, y, rows_above_density, serial_work):  # pragma: no cover - compiled
    """The matrix-vector product's kernel choice (see :func:`matmul`), in compiled code."""
    codebook = codebook.astype(x.dtype)           # 16 values: products in x's precision
    cols = x.size
    nonzero = _count_nonzero(x)
    if row_entries.size and nonzero > rows_above_density * cols:
        if row_lookup:
            if row_entries.size >= serial_work:
                _rows_lookup_mv_parallel(rowptr, row_entries, row_code_bits, codebook, x, y, ROW_CHUNKS)
            else:
                _rows_lookup_mv_serial(rowptr, row_entries, row_code_bits, codebook, x, y, 1)
        elif row_entries.size >= serial_work:
            _rows_mv_parallel(rowptr, row_entries, row_code_bits, codebook, x, y, ROW_CHUNKS)
        else:
            _rows_mv_serial(rowptr, row_entries, row_code_bits, codebook, x, y, 1)
    elif entries.size * nonzero // max(1, cols) < serial_work or row_start.size == 2:
        _spmv_serial(row_start, colptr, entries, words, code_bits, codebook, x, y)
    else:
        _spmv_parallel(row_start, colptr, entries, words, code_bits, codebook, x, y)


# One compiled call per matrix-vector product: with the interpreter's data out of the cache
# (the *cold* regime) each call from Python costs microseconds; three calls (allocate,
# count, multiply) took 15–20 µs more than this one on the small EIE layers.
@numba.njit(cache=True)
def _matvec(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
            row_lookup, x, rows_above_density, serial_work):  # pragma: no cover - compiled
    y = _zeros_on_cache_lines((row_start[row_start.size - 1],), x)
    _matvec_into(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                 row_lookup, x, y, rows_above_density, serial_work)
    return y


@numba.njit(cache=True)
def _matvec_out(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                row_lookup, x, y, rows_above_density, serial_work):  # pragma: no cover - compiled
    y[:] = 0
    _matvec_into(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                 row_lookup, x, y, rows_above_density, serial_work)


_NO_ROWPTR = np.zeros(1, np.int32)           # stand-ins for a missing twin
_NO_ENTRIES = np.zeros(0, np.uint8)


def _twin_arguments(m: PackedMatrix, twin: PackedMatrix | None) -> tuple:
    """``(rowptr, row_entries, row_code_bits, lookup)`` of the batch-1 kernel choice for ``m``'s
    row-major twin (stand-ins without one); ValueError for a twin of the wrong shape."""
    if twin is None:
        return _NO_ROWPTR, _NO_ENTRIES, m.code_bits, False
    if twin.shape != m.shape[::-1]:
        raise ValueError(f"twin must be the row-major twin of shape {m.shape[::-1]}, got {twin.shape}")
    return twin.colptr[0], twin.entries, twin.code_bits, twin.absolute


def matmul(m: PackedMatrix, x: np.ndarray, out: np.ndarray | None = None,
           twin: PackedMatrix | None = None, blocks: RowBlocks | None = None) -> np.ndarray:
    """``y = W x`` for a packed ``W`` of shape ``(R, C)``.

    With only the column layout ``m``, every product skips zero activations (whole
    columns).  Given also the row-major twin (:func:`pack_rows`), products with
    several right-hand sides, and matrix-vector products whose activations are mostly
    nonzero (> :data:`ROWS_ABOVE_DENSITY`), run on the row kernels instead.

    Args:
        m: the packed matrix.
        x: float32 or float64, C-contiguous, shape ``(C,)`` (matrix-vector) or
            ``(C, N)`` (N columns, e.g. a batch or im2col patches).
        out: optional C-contiguous array of the result's shape and dtype to write into
            (fastest when it starts on a 64-byte cache line, as the one made here does).
        twin: optional row-major twin of ``m`` (shape ``(C, R)``).
        blocks: optional column-blocked twin (:func:`pack_row_blocks`): products with
            several right-hand sides then run block by block on it.

    Returns:
        ``y`` of shape ``(R,)`` or ``(R, N)``, dtype of ``x``.

    Raises:
        ValueError: wrong shape, dtype or a non-contiguous array.
    """
    rows, cols = m.shape
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be a float32 or float64 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim not in (1, 2) or x.shape[0] != cols:
        raise ValueError(f"x must have shape ({cols},) or ({cols}, N), got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    shape = (rows,) + x.shape[1:]
    if out is not None and (out.shape != shape or out.dtype != x.dtype or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous {x.dtype} array of shape {shape}")
    if twin is not None and twin.shape != (cols, rows):
        raise ValueError(f"twin must be the row-major twin of shape ({cols}, {rows}), got {twin.shape}")
    if m.absolute:
        raise ValueError("m must be a column layout from pack(), not a lookup twin")
    if blocks is not None and blocks.shape != m.shape:
        raise ValueError(f"blocks must be the column-blocked twin of shape {m.shape}, got {blocks.shape}")
    if x.ndim == 1:                              # the latency-bound case: one compiled call
        rowptr, row_entries, row_code_bits, lookup = _twin_arguments(m, twin)
        if out is None:
            return _matvec(m.row_start, m.colptr, m.entries, m.words, m.code_bits, m.codebook, rowptr, row_entries,
                           row_code_bits, lookup, x, ROWS_ABOVE_DENSITY, SERIAL_WORK)
        _matvec_out(m.row_start, m.colptr, m.entries, m.words, m.code_bits, m.codebook, rowptr, row_entries,
                    row_code_bits, lookup, x, out, ROWS_ABOVE_DENSITY, SERIAL_WORK)
        return out
    return _matmul_columns(m, x, twin, m.codebook.astype(x.dtype, copy=False), out, blocks)


def _rows_product(twin: PackedMatrix, codebook: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out += W x`` by the row kernels of the twin (threaded unless the work is small)."""
    work = twin.entries.size * x.shape[1]
    chunks = ROW_CHUNKS if work >= SERIAL_WORK else 1
    if twin.absolute:
        kernel = _rows_absolute_mm_serial if chunks == 1 else _rows_absolute_mm_parallel
    else:
        kernel = _rows_mm_serial if chunks == 1 else _rows_mm_parallel
    kernel(twin.colptr[0], twin.entries, twin.code_bits, codebook, x, out, chunks)


def _matmul_columns(m: PackedMatrix, x: np.ndarray, twin: PackedMatrix | None, codebook: np.ndarray,
                    out: np.ndarray | None = None, blocks: RowBlocks | None = None) -> np.ndarray:
    """The several-right-hand-sides branch of :func:`matmul` (inputs checked): ``x`` ``(C, N)`` of
    the codebook's dtype — float, or int32 for the int8 path (:func:`matmul_int8`)."""
    shape = (m.shape[0], x.shape[1])
    if out is None:
        out = _zeros_on_cache_lines(shape, x)
    else:
        out.fill(0)
    n = x.shape[1]
    if n == 0:
        return out
    if blocks is not None:                       # block by block: each block's rows of x stay near the core
        for k, block in enumerate(blocks.blocks):
            _rows_product(block, codebook, x[blocks.bounds[k]:blocks.bounds[k + 1]], out)
        return out
    if twin is not None:
        _rows_product(twin, codebook, x, out)
        return out
    kernel = _spmm_serial if m.entries.size * n < SERIAL_WORK or m.partitions == 1 else _spmm_parallel
    kernel(m.row_start, m.colptr, m.entries, m.code_bits, codebook, x, out)
    return out


@numba.njit(cache=True)
def _gather_rows(rowptr, entries, code_bits, absolute, codebook, index, out):  # pragma: no cover - compiled
    mask = (1 << code_bits) - 1
    for i in range(index.size):
        r = index[i]
        col = -1
        for k in range(rowptr[r], rowptr[r + 1]):
            e = np.int64(entries[k])
            col = (e >> code_bits) if absolute else col + (e >> code_bits) + 1
            code = e & mask
            if code:
                out[i, col] = codebook[code]


def gather_rows(twin: PackedMatrix, index: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows ``index`` of ``W`` decoded from its row-major twin (an embedding lookup).

    Args:
        twin: the row-major twin (:func:`pack_rows`) of ``W`` of shape ``(R, C)`` (the
            twin's own shape is ``(C, R)``).
        index: int64 row numbers, any shape, each in ``[0, R)``.
        dtype: float32 or float64 of the result.

    Returns:
        ``(*index.shape, C)``: ``out[..., c] = codebook[code(W[index, c])]``.
    """
    cols, rows = twin.shape
    flat = np.ascontiguousarray(index, np.int64).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= rows):
        raise ValueError(f"index out of range for {rows} rows")
    out = np.zeros((flat.size, cols), dtype)
    _gather_rows(twin.colptr[0], twin.entries, twin.code_bits, twin.absolute, twin.codebook.astype(dtype), flat, out)
    return out.reshape(*np.shape(index), cols)


def matvec_function(m: PackedMatrix, twin: PackedMatrix | None = None):
    """A prepared ``x ↦ W x`` for C-contiguous float vectors ``x`` of ``m.shape[1]`` values,
    with the checks of :func:`matmul` done once here instead of per call (a layer served at
    batch 1 calls it for every sample: the checks cost as much as a small layer's product).

    Returns:
        ``f(x) -> y``, a new ``(rows,)`` array of ``x``'s dtype.
    """
    if m.absolute:
        raise ValueError("m must be a column layout from pack(), not a lookup twin")
    rowptr, row_entries, row_code_bits, lookup = _twin_arguments(m, twin)
    args = (m.row_start, m.colptr, m.entries, m.words, m.code_bits, m.codebook, rowptr, row_entries, row_code_bits,
            lookup)

    def f(x: np.ndarray) -> np.ndarray:
        return _matvec(*args, x, ROWS_ABOVE_DENSITY, SERIAL_WORK)
    return f


@numba.njit(fastmath=_ROWS_FASTMATH, inline="always")
def _conv_direct_task(task, rowptr, entries, code_bits, absolute, codebook, xp, kh, kw, sh, sw, dh, dw, groups,
                      out):  # pragma: no cover - compiled
    """Output plane ``task`` (= image · O + output channel) of :func:`conv2d_direct`."""
    channels = xp.shape[1]
    _, out_channels, out_h, out_w = out.shape
    mask = np.uint64((1 << code_bits) - 1)
    shift = np.uint64(code_bits)
    one = np.uint64(1)
    taps = np.uint64(kh * kw)
    ukw = np.uint64(kw)
    in_per_group = channels // groups
    out_per_group = out_channels // groups
    n = task // out_channels
    o = task % out_channels
    first_channel = np.uint64((o // out_per_group) * in_per_group)
    col = np.uint64(0) - one                 # wraps; the first step adds ≥ 1
    for k in range(np.uint64(rowptr[o]), np.uint64(rowptr[o + 1])):
        e = np.uint64(entries[k])
        col = (e >> shift) if absolute else col + (e >> shift) + one
        code = e & mask
        if code == 0:
            continue
        w = codebook[code]
        c = first_channel + col // taps
        tap = col % taps
        ky = tap // ukw
        kx = tap % ukw
        for oy in range(out_h):
            xrow = xp[n, c, np.uint64(oy * sh) + ky * np.uint64(dh)]
            orow = out[n, o, oy]
            base = kx * np.uint64(dw)
            if sw == 1:
                for ox in range(out_w):
                    orow[ox] += w * xrow[base + np.uint64(ox)]
            else:
                for ox in range(out_w):
                    orow[ox] += w * xrow[base + np.uint64(ox * sw)]


@numba.njit(parallel=True, fastmath=_ROWS_FASTMATH, cache=True)
def _conv_direct_parallel(rowptr, entries, code_bits, absolute, codebook, xp, kh, kw, sh, sw, dh, dw, groups,
                          out):  # pragma: no cover - compiled
    for task in prange(out.shape[0] * out.shape[1]):
        _conv_direct_task(task, rowptr, entries, code_bits, absolute, codebook, xp, kh, kw, sh, sw, dh, dw, groups,
                          out)


@numba.njit(fastmath=_ROWS_FASTMATH, cache=True)
def _conv_direct_serial(rowptr, entries, code_bits, absolute, codebook, xp, kh, kw, sh, sw, dh, dw, groups,
                        out):  # pragma: no cover - compiled
    for task in range(out.shape[0] * out.shape[1]):
        _conv_direct_task(task, rowptr, entries, code_bits, absolute, codebook, xp, kh, kw, sh, sw, dh, dw, groups,
                          out)


#: direct convolutions of fewer multiply-adds than this run on one thread
CONV_SERIAL_WORK = 1 << 18


def conv2d_direct(twin: PackedMatrix, x: np.ndarray, kernel_size: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int], groups: int = 1) -> np.ndarray:
    """Direct sparse convolution (Park et al., ICLR'17 "Faster CNNs with Direct Sparse Convolutions").

    For every stored weight ``W[o, c, ky, kx]`` of output channel ``o`` (its row of the
    row-major twin of the ``(O, C/groups · kh · kw)`` matrix), the shifted input plane is
    added to the output plane,

        y[n, o, oy, ox] += W[o, c, ky, kx] · x[n, g·C/groups + c, oy·s_h + ky·d_h, ox·s_w + kx·d_w],

    so no im2col patch matrix is built (for small images building it cost 3–7× the sparse
    product itself) and the work is ``nonzeros × output positions``; the inner loop runs
    along a contiguous output row.  Output channels (× images) run in parallel.

    Args:
        twin: the row-major twin (:func:`pack_rows`) of the convolution's weight matrix.
        x: float32/float64 C-contiguous ``(N, C, H, W)``, already zero-padded.
        kernel_size, stride, dilation: pairs, as ``nn.Conv2d``'s.
        groups: as ``nn.Conv2d``'s (depthwise: ``groups = C``).

    Returns:
        ``(N, O, out_h, out_w)`` of ``x``'s dtype (no bias).
    """
    cols, out_channels = twin.shape
    kh, kw = kernel_size
    n, channels, h, w = x.shape
    if cols != channels // groups * kh * kw or channels % groups or out_channels % groups:
        raise ValueError(f"weight of {cols} columns does not fit {channels} channels, {groups} groups, {kh}×{kw}")
    if not x.flags.c_contiguous or x.dtype not in (np.float32, np.float64):
        raise ValueError("x must be a C-contiguous float32 or float64 array")
    out_h = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {h}×{w} is smaller than the {kh}×{kw} kernel")
    out = np.zeros((n, out_channels, out_h, out_w), x.dtype)
    work = twin.entries.size * n * out_h * out_w
    kernel = _conv_direct_parallel if work >= CONV_SERIAL_WORK else _conv_direct_serial
    kernel(twin.colptr[0], twin.entries, twin.code_bits, twin.absolute, twin.codebook.astype(x.dtype), x,
                 kh, kw, stride[0], stride[1], dilation[0], dilation[1], groups, out)
    return out


#: the element-wise functions a chain of layers (:func:`chain_function`) applies after a product
CHAIN_ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2, "tanh": 3, "sigmoid": 4}


@numba.njit(inline="always")
def _activate(y, code):  # pragma: no cover - compiled
    if code == 1:
        for i in range(y.size):
            if y[i] < 0:
                y[i] = 0
    elif code == 2:
        for i in range(y.size):
            y[i] = min(max(y[i], 0), 6)
    elif code == 3:
        for i in range(y.size):
            y[i] = np.tanh(y[i])
    elif code == 4:
        for i in range(y.size):
            y[i] = 1 / (1 + np.exp(-y[i]))


@numba.njit(cache=True)
def _chain_layer(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                 row_lookup, bias, activation, x, rows_above_density, serial_work):  # pragma: no cover - compiled
    y = _zeros_on_cache_lines((row_start[row_start.size - 1],), x)
    _matvec_into(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_entries, row_code_bits,
                 row_lookup, x, y, rows_above_density, serial_work)
    for i in range(bias.size):
        y[i] += bias[i]
    _activate(y, activation)
    return y


@numba.njit(inline="always")
def _chain_rows(meta, layer, entries, words, x, rows_above_density, serial_work):  # pragma: no cover - compiled
    """One layer of :func:`_chain` with its column entries already viewed at their width: the
    row twin's width chosen here (8, 16 or 32 bits)."""
    row_start, colptr, _, _, codebook, rowptr, row_raw, bias = layer
    code_bits, row_bits, row_code_bits, row_lookup, activation = meta[1], meta[2], meta[3], meta[4] != 0, meta[5]
    if row_bits == 8:
        return _chain_layer(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_raw, row_code_bits,
                            row_lookup, bias, activation, x, rows_above_density, serial_work)
    if row_bits == 16:
        return _chain_layer(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_raw.view(np.uint16),
                            row_code_bits, row_lookup, bias, activation, x, rows_above_density, serial_work)
    return _chain_layer(row_start, colptr, entries, words, code_bits, codebook, rowptr, row_raw.view(np.uint32),
                        row_code_bits, row_lookup, bias, activation, x, rows_above_density, serial_work)


@numba.njit(cache=True)
def _chain(layers, metas, x, rows_above_density, serial_work):  # pragma: no cover - compiled
    # every layer's entries travel as raw bytes (one type for all layers: a homogeneous list the
    # loop can iterate) and are viewed here at their width
    for i in range(len(layers)):
        layer = layers[i]
        meta = metas[i]
        raw, raw_words = layer[2], layer[3]
        if meta[0] == 8:
            x = _chain_rows(meta, layer, raw, raw_words.view(np.uint32), x, rows_above_density, serial_work)
        elif meta[0] == 16:
            x = _chain_rows(meta, layer, raw.view(np.uint16), raw_words.view(np.uint64), x, rows_above_density,
                            serial_work)
        else:
            x = _chain_rows(meta, layer, raw.view(np.uint32), raw_words.view(np.uint32), x, rows_above_density,
                            serial_work)
    return x


def chain_function(layers: list[tuple[PackedMatrix, PackedMatrix | None, np.ndarray | None, str]]):
    """A prepared ``x ↦ f_L(W_L … f_1(W_1 x + b_1) … + b_L)`` for one float32 vector ``x``: a
    chain of packed matrix–vector products (each by :func:`matmul`'s batch-1 kernel choice:
    the column kernel skipping zero activations, EIE, or the row kernel), biases and
    element-wise activations in **one** compiled call.

    At batch 1 a small network's time is mostly the interpreter's, not the products': on
    LeNet-300-100 at 90% sparsity one call per layer (through ``torch.nn.functional``,
    the dispatch and the kernel's own entry) cost several times the products themselves.
    Fusing the layers into one call leaves one entry into compiled code per sample (what
    graph-compiling inference engines such as ONNX Runtime do for dense layers, here for
    sparse, weight-shared ones).

    Args:
        layers: per layer, in order: the column layout (:func:`pack`) of ``W_l`` of shape
            ``(R_l, C_l)`` with ``C_l = R_{l−1}``, its row-major twin or ``None``, the bias
            (``R_l`` values) or ``None``, and the activation after it, a key of
            :data:`CHAIN_ACTIVATIONS`.

    Returns:
        ``f(x) -> y``: ``x`` a C-contiguous float32 vector of ``C_1`` values, ``y`` a new
        float32 vector of ``R_L`` values.

    Raises:
        ValueError: no layers, shapes that do not chain, a lookup twin, a bias of the wrong
            size or an unknown activation.
    """
    if not layers:
        raise ValueError("a chain needs at least one layer")
    packed, metas = [], []
    for i, (m, twin, bias, activation) in enumerate(layers):
        if m.absolute:
            raise ValueError(f"layer {i}: m must be a column layout from pack(), not a lookup twin")
        if i and m.shape[1] != layers[i - 1][0].shape[0]:
            raise ValueError(f"layer {i}: {m.shape[1]} inputs after {layers[i - 1][0].shape[0]} outputs")
        if activation not in CHAIN_ACTIVATIONS:
            raise ValueError(f"layer {i}: activation {activation!r} (expected one of {', '.join(CHAIN_ACTIVATIONS)})")
        try:
            rowptr, row_entries, row_code_bits, lookup = _twin_arguments(m, twin)
        except ValueError as error:
            raise ValueError(f"layer {i}: {error}") from None
        b = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        if bias is not None and b.shape != (m.shape[0],):
            raise ValueError(f"layer {i}: bias of shape {b.shape}, expected ({m.shape[0]},)")
        if m.colptr.dtype != np.int32 or rowptr.dtype != np.int32:
            raise ValueError(f"layer {i}: more than 2^31 entries, too large for a chain")
        words = m.words if m.words.size else np.zeros(0, {8: np.uint32, 16: np.uint64}.get(m.entry_bits, np.uint32))
        packed.append((m.row_start.astype(np.int64, copy=False), m.colptr, m.entries.view(np.uint8),
                       words.view(np.uint8), m.codebook.astype(np.float32), rowptr, row_entries.view(np.uint8), b))
        metas.append((m.entry_bits, m.code_bits, 8 * row_entries.itemsize, row_code_bits, int(lookup),
                      CHAIN_ACTIVATIONS[activation]))
    # a typed list, not a tuple: one compiled signature for chains of every length (a tuple's
    # type includes its length, and each new length would compile the kernel again)
    packed = numba.typed.List(packed)
    meta = np.array(metas, np.int64)

    def f(x: np.ndarray) -> np.ndarray:
        return _chain(packed, meta, x, ROWS_ABOVE_DENSITY, SERIAL_WORK)
    return f


# ------------------------------------------------------------------------------ the int8 path
#: symmetric int8: values in [−127, 127] (−128 left out, so ``−q`` is always representable)
INT8_MAX = 127

#: an int32 accumulator holds any row of at most this many int8 × int8 products
INT8_MAX_COLUMNS = (2 ** 31 - 1) // (INT8_MAX * INT8_MAX)


def quantize_codebook(codebook: np.ndarray) -> tuple[np.ndarray, float]:
    """The codebook as symmetric per-tensor int8: ``c ≈ s · q``.

    Dynamic quantization (Jacob et al., CVPR'18, symmetric variant; as fbgemm's and ONNX
    Runtime's dynamic linear layers): ``s = max|c| / 127`` and ``q = rint(c / s)`` in
    ``[−127, 127]``; the zero weight stays exactly 0.

    Args:
        codebook: float ``(K,)`` shared values.

    Returns:
        ``(q, s)``: ``q`` int32 ``(K,)`` (int8 values, held wide for the kernels' arithmetic)
        and the float scale ``s`` (1.0 for an all-zero codebook).
    """
    c = np.asarray(codebook, np.float64)
    top = float(np.abs(c).max()) if c.size else 0.0
    scale = top / INT8_MAX if top > 0 else 1.0
    return np.clip(np.rint(c / scale), -INT8_MAX, INT8_MAX).astype(np.int32), scale


@numba.njit(cache=True)
def _quantize_vector(x):  # pragma: no cover - compiled
    """``(q, s)`` with ``x ≈ s · q``: one symmetric scale for the whole vector, ``q`` int32 in [−127, 127]."""
    top = 0.0
    for i in range(x.size):
        top = max(top, abs(np.float64(x[i])))
    scale = top / INT8_MAX if top > 0 else 1.0
    inv = 1.0 / scale
    q = np.empty(x.size, np.int32)
    for i in range(x.size):
        q[i] = np.int32(np.rint(np.float64(x[i]) * inv))
    return q, scale


@numba.njit(cache=True)
def _quantize_columns(x):  # pragma: no cover - compiled
    """``(q, s)`` with ``x[:, b] ≈ s[b] · q[:, b]``: a symmetric scale per column (per sample)."""
    cols, n = x.shape
    top = np.zeros(n, np.float64)
    for c in range(cols):
        for b in range(n):
            top[b] = max(top[b], abs(np.float64(x[c, b])))
    scale = np.empty(n, np.float64)
    for b in range(n):
        scale[b] = top[b] / INT8_MAX if top[b] > 0 else 1.0
        top[b] = 1.0 / scale[b]
    q = np.empty((cols, n), np.int32)
    for c in range(cols):
        for b in range(n):
            q[c, b] = np.int32(np.rint(np.float64(x[c, b]) * top[b]))
    return q, scale


@numba.njit(cache=True)
def _matvec_int8(row_start, colptr, entries, words, code_bits, codebook_q, scale_w, rowptr, row_entries,
                 row_code_bits, row_lookup, x, rows_above_density, serial_work):  # pragma: no cover - compiled
    xq, scale_x = _quantize_vector(x)
    acc = _zeros_on_cache_lines((row_start[row_start.size - 1],), xq)       # int32
    _matvec_into(row_start, colptr, entries, words, code_bits, codebook_q, rowptr, row_entries, row_code_bits,
                 row_lookup, xq, acc, rows_above_density, serial_work)
    y = _zeros_on_cache_lines((acc.size,), x)
    s = scale_x * scale_w
    for i in range(acc.size):
        y[i] = acc[i] * s
    return y


@numba.njit(cache=True)
def _rescale_columns(acc, scale_w, scale_x, y):  # pragma: no cover - compiled
    rows, n = acc.shape
    for r in range(rows):
        for b in range(n):
            y[r, b] = acc[r, b] * (scale_w * scale_x[b])


def _check_int8(m: PackedMatrix) -> None:
    if m.absolute:
        raise ValueError("m must be a column layout from pack(), not a lookup twin")
    if m.shape[1] > INT8_MAX_COLUMNS:
        raise ValueError(f"the int8 path sums at most {INT8_MAX_COLUMNS} products per row in int32, "
                         f"the matrix has {m.shape[1]} columns")


def matvec_int8_function(m: PackedMatrix, twin: PackedMatrix | None = None):
    """A prepared ``x ↦ W x`` on int8 activations and an int8 codebook, int32 accumulation.

    The quantized-activation path of Deep Compression's inference (EIE computes with 16-bit
    fixed-point activations; here int8, as dynamic int8 inference engines do): per call the
    activations are quantized with one symmetric scale, ``x ≈ s_x · q_x``
    (:func:`_quantize_vector`); the codebook is quantized once, ``c ≈ s_w · q_w``
    (:func:`quantize_codebook`); the same batch-1 kernels as :func:`matmul` (column kernel
    skipping zero activations, row or lookup kernel) then sum ``q_w · q_x`` in integers and

        y_r = s_w · s_x · Σ_j q_w[code(W_rj)] · q_x[j]

    is exact for the quantized operands; against the float product the error is that of
    the two roundings (at most ``s_x/2`` per activation and ``s_w/2`` per weight).

    Args:
        m: the column layout (at most :data:`INT8_MAX_COLUMNS` columns).
        twin: optional row-major twin.

    Returns:
        ``f(x) -> y``: ``x`` a C-contiguous float32/float64 vector of ``m.shape[1]`` values,
        ``y`` a new ``(rows,)`` array of its dtype.

    Raises:
        ValueError: a lookup twin as ``m``, too many columns, a twin of the wrong shape.
    """
    _check_int8(m)
    codebook_q, scale_w = quantize_codebook(m.codebook)
    rowptr, row_entries, row_code_bits, lookup = _twin_arguments(m, twin)
    args = (m.row_start, m.colptr, m.entries, m.words, m.code_bits, codebook_q, scale_w, rowptr, row_entries,
            row_code_bits, lookup)

    def f(x: np.ndarray) -> np.ndarray:
        return _matvec_int8(*args, x, ROWS_ABOVE_DENSITY, SERIAL_WORK)
    return f


def matmul_int8(m: PackedMatrix, x: np.ndarray, twin: PackedMatrix | None = None) -> np.ndarray:
    """``y = W x`` for ``x`` of shape ``(C, N)`` on int8 activations, one scale per column.

    As :func:`matvec_int8_function`, with ``x[:, b] ≈ s_b · q[:, b]`` (per-sample dynamic
    scales, so one large sample does not coarsen the others) and
    ``y[r, b] = s_w · s_b · Σ_j q_w[code(W_rj)] · q[j, b]`` summed in integers by
    :func:`matmul`'s kernels (the row-major twin when given, else the column kernel).

    Args:
        m: the column layout (at most :data:`INT8_MAX_COLUMNS` columns).
        x: float32/float64, C-contiguous, ``(C,)`` or ``(C, N)``.
        twin: optional row-major twin.

    Returns:
        ``(R,)`` or ``(R, N)`` of ``x``'s dtype.
    """
    _check_int8(m)
    rows, cols = m.shape
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise ValueError("x must be a C-contiguous float32 or float64 numpy array")
    if x.ndim not in (1, 2) or x.shape[0] != cols:
        raise ValueError(f"x must have shape ({cols},) or ({cols}, N), got {x.shape}")
    if x.ndim == 1:
        return matvec_int8_function(m, twin)(x)
    codebook_q, scale_w = quantize_codebook(m.codebook)
    xq, scale_x = _quantize_columns(x)
    acc = _matmul_columns(m, xq, twin, codebook_q)
    y = np.empty(acc.shape, x.dtype)
    _rescale_columns(acc, scale_w, scale_x, y)
    return y
