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
step costs no interpreter round trip.
"""

from __future__ import annotations

import numba
import numpy as np

from .cpu import (PackedMatrix, _lookup_table, _rows_absolute_mm_range, _rows_lookup_range, _rows_mm_range,
                  _rows_mv_range, _table_on_cache_lines)

#: cell kinds, as the compiled loop takes them
MODES = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}


@numba.njit(inline="always")
def _sigmoid(v):  # pragma: no cover - compiled
    return 1.0 / (1.0 + np.exp(-v))


@numba.njit(cache=True)
def _sequence(mode, xp, h, c, rowptr, entries, code_bits, absolute, codebook, bias_hh, reverse,
              out):  # pragma: no cover - compiled
    steps, batch, _ = xp.shape
    hidden = h.shape[1]
    rows = rowptr.size - 1
    codebook = codebook.astype(xp.dtype)
    hb = np.empty(hidden, xp.dtype)
    gh = np.empty(rows, xp.dtype)
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
                _rows_lookup_range(0, rows, rowptr, entries, codebook, table, gh)
            else:
                _rows_mv_range(0, rows, rowptr, entries, code_bits, codebook, hb, gh)
            for r in range(rows):
                gh[r] += bias_hh[r]
            if mode == 0:
                for j in range(hidden):
                    i = _sigmoid(xp[t, b, j] + gh[j])
                    f = _sigmoid(xp[t, b, hidden + j] + gh[hidden + j])
                    g = np.tanh(xp[t, b, 2 * hidden + j] + gh[2 * hidden + j])
                    o = _sigmoid(xp[t, b, 3 * hidden + j] + gh[3 * hidden + j])
                    cj = f * c[b, j] + i * g
                    c[b, j] = cj
                    h[b, j] = o * np.tanh(cj)
            elif mode == 1:
                for j in range(hidden):
                    r_ = _sigmoid(xp[t, b, j] + gh[j])
                    z = _sigmoid(xp[t, b, hidden + j] + gh[hidden + j])
                    n = np.tanh(xp[t, b, 2 * hidden + j] + r_ * gh[2 * hidden + j])
                    h[b, j] = (1.0 - z) * n + z * hb[j]
            elif mode == 2:
                for j in range(hidden):
                    h[b, j] = np.tanh(xp[t, b, j] + gh[j])
            else:
                for j in range(hidden):
                    v = xp[t, b, j] + gh[j]
                    h[b, j] = max(v, 0.0)
            for j in range(hidden):
                out[t, b, j] = h[b, j]


def run_sequence(mode: str, xp: np.ndarray, h: np.ndarray, c: np.ndarray | None, w_hh: PackedMatrix,
                 bias_hh: np.ndarray | None, reverse: bool = False) -> np.ndarray:
    """One direction of one recurrent layer over a whole sequence (see the module docstring).

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        xp: ``(T, B, G·H)`` input terms ``x_t W_ihᵀ + b_ih`` (G = 4, 3, 1), float32 or float64.
        h: ``(B, H)`` initial hidden state, updated in place to the last one.
        c: ``(B, H)`` initial LSTM cell state (updated in place), ``None`` otherwise.
        w_hh: the row-major twin of the compressed ``W_hh`` (shape ``(H, G·H)``).
        bias_hh: ``(G·H,)`` or ``None``.
        reverse: run from ``t = T`` down to 1 (the backward direction).

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
    _sequence(MODES[mode], np.ascontiguousarray(xp), h, cell, w_hh.colptr[0], w_hh.entries, w_hh.code_bits,
              w_hh.absolute, w_hh.codebook, bias, reverse, out)
    return out
