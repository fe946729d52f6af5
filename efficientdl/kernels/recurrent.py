"""CPU kernel: recurrent layers (LSTM, GRU, Elman RNN) whose recurrent matrix is compressed.

A recurrent layer computes, for ``t = 1 … T`` (Hochreiter & Schmidhuber 1997; Cho et al. 2014),

* LSTM: ``g = x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh`` split into ``i, f, g̃, o`` (each ``H``);
  ``c ← σ(f)·c + σ(i)·tanh(g̃)``, ``h ← σ(o)·tanh(c)``;
* GRU: ``a = x_t W_ihᵀ + b_ih``, ``b = h W_hhᵀ + b_hh`` split into ``r, z, n``;
  ``r = σ(a_r + b_r)``, ``z = σ(a_z + b_z)``, ``ñ = tanh(a_n + r·b_n)``, ``h ← (1 − z)·ñ + z·h``;
* RNN: ``h ← act(x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh)``, ``act`` = tanh or ReLU,

with torch's gate order.  The input terms of all time steps do not depend on ``h``: the
caller computes them beforehand as one product (``xp``, shape ``(T, B, G·H)``, biases
``b_ih`` included).  What is left is the sequential ``h W_hhᵀ``: per step one matrix–vector
product (one sample: EIE's NT-LSTM case) or one sparse × dense product over the batch's
hidden states, on the row-major twin of the compressed ``W_hh``
(:func:`efficientdl.kernels.cpu.pack_rows`), the gates in the same compiled loop, so a
step costs no interpreter round trip.  :func:`run_layer` computes the input terms too, on the
row twin of the compressed ``W_ih``, in the same compiled call; one sample's steps can run on
``W_hh`` re-laid as row slices (:func:`slice_rows`, SELL-C-σ).
"""

from __future__ import annotations

import numba
import numpy as np

from .cpu import (PackedMatrix, _lookup_table, _rows_absolute_mm_range, _rows_lookup_range, _rows_mm_range,
                  _rows_mv_range, _table_on_cache_lines, _zeros_on_cache_lines)

#: cell kinds, as the compiled loop takes them
MODES = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}


# float32 gates: a rational tanh that vectorises.  The gate non-linearities of a step (5·H
# transcendental calls for an LSTM) cost more than the step's sparse product when each is a
# scalar libm call: on a 128-unit LSTM at 90% sparsity, 312 of a sequence's 475 µs (AVX2 Zen 3).
# This approximation (the rational minimax fit Eigen uses for float tanh, clamped where tanh
# rounds to ±1 in float32) is multiplies, adds, one division and two selects, so the loops
# over a step's gates compile to 8-wide vector code.  Its error against float64 tanh is at
# most 4e-7 on the float32 line (tested); float64 inputs keep libm's tanh and exp.
_TANH_CLAMP = np.float32(7.90531110763549805)
_T1, _T3, _T5 = np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04), np.float32(1.48572235717979e-05)
_T7, _T9 = np.float32(5.12229709037114e-08), np.float32(-8.60467152213735e-11)
_T11, _T13 = np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
_U0, _U2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
_U4, _U6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)


@numba.njit(inline="always")
def _tanh32(v):  # pragma: no cover - compiled
    """tanh of a float32 by the rational approximation above (NaN stays NaN)."""
    x = _TANH_CLAMP if v > _TANH_CLAMP else v
    x = -_TANH_CLAMP if x < -_TANH_CLAMP else x
    x2 = x * x
    p = x2 * _T13 + _T11
    p = x2 * p + _T9
    p = x2 * p + _T7
    p = x2 * p + _T5
    p = x2 * p + _T3
    p = x * (x2 * p + _T1)
    q = x2 * _U6 + _U4
    q = x2 * q + _U2
    q = x2 * q + _U0
    return p / q


@numba.njit(inline="always")
def _sigmoid(v):  # pragma: no cover - compiled
    return 1.0 / (1.0 + np.exp(-v))


@numba.njit(inline="always")
def _sigmoid_range(a, first, last, fast):  # pragma: no cover - compiled
    """``a[first:last] = σ(a[first:last])``: ``σ(v) = (1 + tanh(v/2)) / 2`` in float32 (``fast``), libm otherwise."""
    # unsigned positions: no negative-index wraparound, which would keep the loop scalar
    if fast:
        for r in range(np.uint64(first), np.uint64(last)):
            a[r] = _HALF + _HALF * _tanh32(_HALF * a[r])
    else:
        for r in range(np.uint64(first), np.uint64(last)):
            a[r] = _sigmoid(a[r])


@numba.njit(inline="always")
def _tanh_range(a, first, last, fast):  # pragma: no cover - compiled
    """``a[first:last] = tanh(a[first:last])`` (see :func:`_sigmoid_range`)."""
    if fast:
        for r in range(np.uint64(first), np.uint64(last)):
            a[r] = _tanh32(a[r])
    else:
        for r in range(np.uint64(first), np.uint64(last)):
            a[r] = np.tanh(a[r])


def tanh_float32(x: np.ndarray) -> np.ndarray:
    """The float32 tanh of the recurrent kernel's gates, for tests and inspection.

    ``tanh(x) ≈ x·P(x²) / Q(x²)`` with ``P`` of degree 6 and ``Q`` of degree 3 in ``x²``
    (the rational minimax fit of Eigen's float tanh), ``x`` clamped to ±7.905 (where
    ``tanh`` rounds to ±1 in float32); NaN stays NaN.  Within 4e-7 of float64 ``tanh``.

    Args:
        x: any array; converted to float32.

    Returns:
        A new float32 array of ``x``'s shape.
    """
    out = np.array(x, np.float32, order="C")        # a copy
    _tanh_range_compiled(out.reshape(-1))
    return out


@numba.njit(cache=True, error_model="numpy")
def _tanh_range_compiled(a):  # pragma: no cover - compiled
    _tanh_range(a, 0, a.size, True)


#: rows of the recurrent matrix computed together by the sliced product (:func:`slice_rows`)
SLICE_ROWS = 8


def slice_rows(twin: PackedMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lookup twin of a recurrent matrix re-laid as slices of :data:`SLICE_ROWS` rows (SELL-C-σ).

    Kreutzer, Hager, Wellein, Fehske & Bishop, "A unified sparse matrix data format for
    efficient general sparse matrix-vector multiplication on modern processors with wide
    SIMD units", SIAM J. Sci. Comput. 2014: the rows are sorted by their number of entries
    (σ = all rows), cut into slices of ``C = 8`` rows, and each slice stores its entries
    column by column — entry ``k`` of its 8 rows side by side — padded to its longest row.
    The product then keeps one accumulator per row of the slice: no per-row loop control or
    horizontal sum, which on a gate matrix of ~14 entries per row (a 128-unit LSTM at 90%
    sparsity) cost as much as the loads.  Measured 1.43× faster than the row-by-row lookup
    kernel over 28 steps (63 vs 90 µs; AMD EPYC Zen 3, AVX2), with 10% fewer entries than its
    rows padded to multiples of four.  A filler is the entry 0 (column 0, code 0:
    ``codebook[0] · x[0] = 0``), as in :func:`~efficientdl.kernels.cpu.pack_rows`.

    Args:
        twin: a lookup twin (:func:`~efficientdl.kernels.cpu.pack_rows`, ``absolute``) of shape ``(C, R)``.

    Returns:
        ``(offsets, entries, order)``: slice ``s`` holds ``entries[offsets[s]:offsets[s + 1]]``
        (a multiple of 8), its row ``i`` is output row ``order[8 s + i]``; ``order`` has
        ``⌈R / 8⌉ · 8`` values, those ``≥ R`` naming scratch rows past the output.
    """
    if not twin.absolute:
        raise ValueError("slices are made from a lookup twin (pack_rows with lookup entries)")
    rowptr = twin.colptr[0].astype(np.int64)
    rows = rowptr.size - 1
    entries = twin.entries
    real = entries != 0                          # fillers are 0; a stored weight has a nonzero code
    row_of = np.repeat(np.arange(rows), np.diff(rowptr))
    lengths = np.bincount(row_of[real], minlength=rows)
    slices = -(-rows // SLICE_ROWS)
    order = np.argsort(-lengths, kind="stable")
    order = np.concatenate([order, np.arange(rows, slices * SLICE_ROWS)]).astype(np.int64)
    padded_lengths = np.concatenate([lengths, np.zeros(slices * SLICE_ROWS - rows, np.int64)])
    widths = padded_lengths[order].reshape(slices, SLICE_ROWS).max(axis=1)
    offsets = np.zeros(slices + 1, np.int64)
    np.cumsum(widths * SLICE_ROWS, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), entries.dtype)
    position = np.empty(slices * SLICE_ROWS, np.int64)
    position[order] = np.arange(slices * SLICE_ROWS)   # row → its place among the sorted rows
    for r in range(rows):
        values = entries[rowptr[r]:rowptr[r + 1]]
        values = values[values != 0]
        place = position[r]
        start = offsets[place // SLICE_ROWS] + place % SLICE_ROWS
        out[start:start + SLICE_ROWS * values.size:SLICE_ROWS] = values
    return offsets, out, order


#: stand-ins for no slices
NO_SLICES = (np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.int64))


@numba.njit(fastmath={"contract"}, inline="always")
def _slices_lookup(offsets, entries, order, codebook, table, y):  # pragma: no cover - compiled
    """``y[order[8 s + i]] = Σ_k table[entries[offsets[s] + 8 k + i]]`` (see :func:`slice_rows`)."""
    one = np.uint64(1)
    eight = np.uint64(8)
    for s in range(offsets.size - 1):
        a0 = codebook[0]                         # the exact zero, in the table's dtype
        a1 = a2 = a3 = a4 = a5 = a6 = a7 = a0
        for k in range(np.uint64(offsets[s]), np.uint64(offsets[s + 1]), eight):
            a0 += table[np.uint64(entries[k])]
            a1 += table[np.uint64(entries[k + one])]
            a2 += table[np.uint64(entries[k + np.uint64(2)])]
            a3 += table[np.uint64(entries[k + np.uint64(3)])]
            a4 += table[np.uint64(entries[k + np.uint64(4)])]
            a5 += table[np.uint64(entries[k + np.uint64(5)])]
            a6 += table[np.uint64(entries[k + np.uint64(6)])]
            a7 += table[np.uint64(entries[k + np.uint64(7)])]
        b = 8 * s
        y[order[b]] = a0
        y[order[b + 1]] = a1
        y[order[b + 2]] = a2
        y[order[b + 3]] = a3
        y[order[b + 4]] = a4
        y[order[b + 5]] = a5
        y[order[b + 6]] = a6
        y[order[b + 7]] = a7


@numba.njit(cache=True)
def _slices_product(offsets, entries, order, code_bits, codebook, x):  # pragma: no cover - compiled
    """One matrix–vector product from :func:`slice_rows` (``order.size`` values; rows ``≥ R`` are scratch)."""
    book = codebook.astype(x.dtype)
    table = _table_on_cache_lines(x.size << code_bits, x)
    _lookup_table(0, x.size, code_bits, book, x, table)
    y = np.zeros(order.size, x.dtype)
    _slices_lookup(offsets, entries, order, book, table, y)
    return y


# error_model="numpy": IEEE division (no zero-division test per element), without which the
# gate loops stay scalar
@numba.njit(cache=True, error_model="numpy")
def _sequence(mode, xp, steps, h, c, rowptr, entries, code_bits, absolute, slices, codebook, bias_hh, reverse,
              fast, out):  # pragma: no cover - compiled
    # xp: (T·B, G·H), row t·B + b the input terms of sample b at step t, in any layout
    batch = h.shape[0]
    hidden = h.shape[1]
    rows = rowptr.size - 1
    codebook = codebook.astype(xp.dtype)
    hb = np.empty(hidden, xp.dtype)
    s_offsets, s_entries, s_order = slices
    gh = np.empty(max(rows, s_order.size), xp.dtype)  # (the slices' scratch rows past the output)
    pre = np.empty(rows, xp.dtype)                   # a step's gate pre-activations, then the gates
    tc = np.empty(hidden, xp.dtype)
    table = _table_on_cache_lines((hidden << code_bits) if absolute else 1, hb)
    h_cols = np.empty((hidden, batch), xp.dtype)     # several samples: one sparse × dense product per step
    gh_cols = np.empty((rows, batch), xp.dtype)
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        if batch > 1:
            for j in range(hidden):
                for b in range(batch):
                    h_cols[j, b] = h[b, j]
            gh_cols[:] = 0
            if absolute:
                _rows_absolute_mm_range(0, rows, rowptr, entries, code_bits, codebook, h_cols, gh_cols)
            else:
                _rows_mm_range(0, rows, rowptr, entries, code_bits, codebook, h_cols, gh_cols)
        for b in range(batch):
            for j in range(hidden):
                hb[j] = h[b, j]
            if batch > 1:
                for r in range(rows):
                    gh[r] = gh_cols[r, b]
            elif absolute:
                _lookup_table(0, hidden, code_bits, codebook, hb, table)
                if s_offsets.size > 1:
                    _slices_lookup(s_offsets, s_entries, s_order, codebook, table, gh)
                else:
                    _rows_lookup_range(0, rows, rowptr, entries, codebook, table, gh)
            else:
                _rows_mv_range(0, rows, rowptr, entries, code_bits, codebook, hb, gh)
            for r in range(rows):
                gh[r] += bias_hh[r]
            # each non-linearity as one loop over contiguous gates (vector code in float32)
            if mode == 0:
                for r in range(rows):
                    pre[r] = xp[t * batch + b, r] + gh[r]
                _sigmoid_range(pre, 0, 2 * hidden, fast)                 # i, f
                _tanh_range(pre, 2 * hidden, 3 * hidden, fast)           # g̃
                _sigmoid_range(pre, 3 * hidden, rows, fast)              # o
                for j in range(hidden):
                    cj = pre[hidden + j] * c[b, j] + pre[j] * pre[2 * hidden + j]
                    c[b, j] = cj
                    tc[j] = cj
                _tanh_range(tc, 0, hidden, fast)
                for j in range(hidden):
                    h[b, j] = pre[3 * hidden + j] * tc[j]
            elif mode == 1:
                for r in range(2 * hidden):
                    pre[r] = xp[t * batch + b, r] + gh[r]
                _sigmoid_range(pre, 0, 2 * hidden, fast)                 # r, z
                for j in range(hidden):
                    pre[2 * hidden + j] = xp[t * batch + b, 2 * hidden + j] + pre[j] * gh[2 * hidden + j]
                _tanh_range(pre, 2 * hidden, rows, fast)                 # ñ
                for j in range(hidden):                                   # (1 − z)·ñ + z·h
                    n = pre[2 * hidden + j]
                    h[b, j] = n + pre[hidden + j] * (hb[j] - n)
            elif mode == 2:
                for j in range(hidden):
                    pre[j] = xp[t * batch + b, j] + gh[j]
                _tanh_range(pre, 0, hidden, fast)
                for j in range(hidden):
                    h[b, j] = pre[j]
            else:
                for j in range(hidden):
                    v = xp[t * batch + b, j] + gh[j]
                    h[b, j] = max(v, 0.0)
            for j in range(hidden):
                out[t, b, j] = h[b, j]


def _checked_slices(slices: tuple | None, w_hh: PackedMatrix) -> tuple:
    if slices is None:
        return NO_SLICES
    if not w_hh.absolute or slices[2].size != -(-w_hh.shape[1] // SLICE_ROWS) * SLICE_ROWS:
        raise ValueError(f"slices of {slices[2].size} rows do not belong to a lookup twin of {w_hh.shape[1]} rows")
    return slices


def run_sequence(mode: str, xp: np.ndarray, h: np.ndarray, c: np.ndarray | None, w_hh: PackedMatrix,
                 bias_hh: np.ndarray | None, reverse: bool = False, slices: tuple | None = None) -> np.ndarray:
    """One direction of one recurrent layer over a whole sequence (see the module docstring).

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        xp: ``(T, B, G·H)`` input terms ``x_t W_ihᵀ + b_ih`` (G = 4, 3, 1), float32 or float64,
            in any memory layout (read where it lies: a channel-major product's transposed
            result needs no copy).
        h: ``(B, H)`` initial hidden state, updated in place to the last one.
        c: ``(B, H)`` initial LSTM cell state (updated in place), ``None`` otherwise.
        w_hh: the row-major twin of the compressed ``W_hh`` (shape ``(H, G·H)``).
        bias_hh: ``(G·H,)`` or ``None``.
        reverse: run from ``t = T`` down to 1 (the backward direction).
        slices: :func:`slice_rows` of ``w_hh`` (a lookup twin): one sample's steps then run the
            sliced product; ``None``: row by row.

    Returns:
        ``(T, B, H)``: the hidden state after every step (in input order).
    """
    steps, batch, gates = xp.shape
    dtype = xp.dtype
    if w_hh.shape != (h.shape[1], gates):
        raise ValueError(f"recurrent matrix {w_hh.shape[::-1]} does not match {gates} gate rows of {h.shape[1]}")
    out = np.empty((steps, batch, h.shape[1]), dtype)
    bias = np.zeros(gates, dtype) if bias_hh is None else np.ascontiguousarray(bias_hh, dtype)
    cell = np.zeros_like(h) if c is None else c
    _sequence(MODES[mode], xp.reshape(steps * batch, gates), steps, h, cell, w_hh.colptr[0], w_hh.entries,
              w_hh.code_bits, w_hh.absolute, _checked_slices(slices, w_hh), w_hh.codebook, bias, reverse,
              dtype == np.float32, out)
    return out


@numba.njit(cache=True, error_model="numpy")
def _layer(mode, x, steps, ih_rowptr, ih_entries, ih_code_bits, ih_absolute, ih_codebook, bias_ih, h, c,
           rowptr, entries, code_bits, absolute, slices, codebook, bias_hh, reverse, fast, out):  # pragma: no cover - compiled
    n, cols = x.shape
    gates = ih_rowptr.size - 1
    xt = _table_on_cache_lines(cols * n, h).reshape((cols, n))    # channel-major input, on a cache line
    for k in range(n):
        for j in range(cols):
            xt[j, k] = x[k, j]
    xp = _zeros_on_cache_lines((gates, n), h)
    book = ih_codebook.astype(h.dtype)
    if ih_absolute:
        _rows_absolute_mm_range(0, gates, ih_rowptr, ih_entries, ih_code_bits, book, xt, xp)
    else:
        _rows_mm_range(0, gates, ih_rowptr, ih_entries, ih_code_bits, book, xt, xp)
    for r in range(gates):
        b = bias_ih[r]
        for k in range(n):
            xp[r, k] += b
    _sequence(mode, xp.T, steps, h, c, rowptr, entries, code_bits, absolute, slices, codebook, bias_hh, reverse, fast,
              out)


def run_layer(mode: str, x: np.ndarray, h: np.ndarray, c: np.ndarray | None, w_ih: PackedMatrix,
              bias_ih: np.ndarray | None, w_hh: PackedMatrix, bias_hh: np.ndarray | None,
              reverse: bool = False, slices: tuple | None = None) -> np.ndarray:
    """One direction of one recurrent layer, input product included, in **one** compiled call.

    ``X W_ihᵀ + b_ih`` for all ``T·B`` inputs as one sparse × dense product on the row-major
    twin of the compressed ``W_ih`` (serial, like the recurrence around it), then the
    recurrence of :func:`run_sequence`.  At batch 1 the separate input product — its own
    call through ``F.linear``, layouts, a bias add and a thread pool woken after the serial
    recurrence — had taken 42–79 µs per layer of a 3-layer 128-unit LSTM against 20 µs for
    the threaded product called alone; the dispatcher measured a layer at 211–217 µs as the
    two calls and 146–154 µs as this one, before the row slices (AVX2 Zen 3).

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        x: ``(T, B, in)`` inputs (any layout), float32 or float64.
        h, c, bias_hh, reverse, slices: as for :func:`run_sequence` (``h``, ``c`` updated in place).
        w_ih: the row-major twin of the compressed ``W_ih`` (shape ``(in, G·H)``).
        bias_ih: ``(G·H,)`` or ``None``.
        w_hh: the row-major twin of the compressed ``W_hh`` (shape ``(H, G·H)``).

    Returns:
        ``(T, B, H)``: the hidden state after every step (in input order).
    """
    steps, batch, cols = x.shape
    dtype = x.dtype
    gates = w_hh.shape[1]
    if h.dtype != dtype or (c is not None and c.dtype != dtype):
        raise ValueError(f"the state must be {dtype} like the input, got {h.dtype}")
    if w_ih.shape != (cols, gates):
        raise ValueError(f"input matrix {w_ih.shape[::-1]} does not match {gates} gate rows of {cols} inputs")
    if w_hh.shape != (h.shape[1], gates):
        raise ValueError(f"recurrent matrix {w_hh.shape[::-1]} does not match {gates} gate rows of {h.shape[1]}")
    out = np.empty((steps, batch, h.shape[1]), dtype)
    b_ih = np.zeros(gates, dtype) if bias_ih is None else np.ascontiguousarray(bias_ih, dtype)
    b_hh = np.zeros(gates, dtype) if bias_hh is None else np.ascontiguousarray(bias_hh, dtype)
    cell = np.zeros_like(h) if c is None else c
    _layer(MODES[mode], x.reshape(steps * batch, cols), steps, w_ih.colptr[0], w_ih.entries, w_ih.code_bits,
           w_ih.absolute, w_ih.codebook, b_ih, h, cell, w_hh.colptr[0], w_hh.entries, w_hh.code_bits, w_hh.absolute,
           _checked_slices(slices, w_hh), w_hh.codebook, b_hh, reverse, dtype == np.float32, out)
    return out
