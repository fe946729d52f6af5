"""The recurrent kernel's float32 gate functions against float64 numpy, and long float32
sequences against torch's own LSTM/GRU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from efficientdl.kernels import cpu
from efficientdl.kernels.recurrent import run_sequence, tanh_float32


def test_float32_tanh_is_within_4e7_of_float64_tanh():
    x = np.linspace(-30, 30, 2_000_001).astype(np.float32)
    err = np.abs(tanh_float32(x).astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7
    small = np.float32([1e-30, -1e-20, 1e-8, 3e-4])            # tanh(x) ≈ x: the relative error too
    assert np.allclose(tanh_float32(small), small, rtol=1e-6, atol=0)
    special = tanh_float32(np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0]))
    assert np.isnan(special[0]) and list(special[1:3]) == [1.0, -1.0]
    assert special[3] == 0 and np.signbit(special[4])


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_a_long_float32_sequence_matches_torch(mode):
    # 200 steps of a 64-unit cell with weights large enough to saturate the gates
    torch.manual_seed(0)
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[mode]
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[mode]
    hidden, steps = 64, 200
    rnn = cls(8, hidden, bias=False)
    rng = np.random.default_rng(1)
    codebook = np.concatenate([[0.0], rng.standard_normal(15) * 0.4]).astype(np.float32)
    codes = rng.integers(1, 16, (gates * hidden, hidden)) * (rng.random((gates * hidden, hidden)) < 0.3)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.from_numpy(codebook[codes]))
    x = torch.randn(steps, 1, 8) * 2
    with torch.no_grad():
        expected, _ = rnn(x)
        xp = (x.reshape(steps, 8) @ rnn.weight_ih_l0.T).reshape(steps, 1, -1).numpy()
    h = np.zeros((1, hidden), np.float32)
    c = np.zeros((1, hidden), np.float32) if mode == "lstm" else None
    out = run_sequence(mode, xp, h, c, cpu.pack_rows(codes, codebook), None)
    np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=2e-5)


def _random_codes(rng, shape, density):
    codebook = np.concatenate([[0.0], rng.standard_normal(15) * 0.4]).astype(np.float32)
    codes = rng.integers(1, 16, shape) * (rng.random(shape) < density)
    return codes, codebook


@pytest.mark.parametrize("rows,cols,density", [(24, 10, 0.3), (13, 7, 0.5), (512, 128, 0.1), (5, 3, 0.0)])
def test_row_slices_hold_every_entry_of_their_row_and_multiply_like_the_dense_matrix(rows, cols, density):
    from efficientdl.kernels.recurrent import SLICE_ROWS, _slices_product, slice_rows
    rng = np.random.default_rng(rows)
    codes, codebook = _random_codes(rng, (rows, cols), density)
    twin = cpu.pack_rows(codes, codebook, lookup=True)
    offsets, entries, order = slice_rows(twin)
    assert order.size % SLICE_ROWS == 0 and sorted(order[:rows]) == list(range(rows))
    assert set(order[rows:].tolist()) == set(range(rows, order.size))     # scratch rows past the output
    lengths = (codes != 0).sum(1)
    assert entries.size == offsets[-1] and np.all(np.diff(offsets) % SLICE_ROWS == 0)
    for place, r in enumerate(order):                                     # each row's own entries, in order
        s, i = divmod(place, SLICE_ROWS)
        held = entries[offsets[s] + i:offsets[s + 1]:SLICE_ROWS]
        expect = [(c << twin.code_bits) | codes[r, c] for c in np.flatnonzero(codes[r])] if r < rows else []
        assert list(held[held != 0]) == expect and not held[len(expect):].any()
        if r < rows:
            assert len(held) - len(expect) < max(1, lengths.max())
    x = rng.standard_normal(cols).astype(np.float32)
    np.testing.assert_allclose(_slices_product(offsets, entries, order, twin.code_bits, twin.codebook, x)[:rows],
                               codebook[codes].astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


def test_slices_are_made_from_a_lookup_twin_only():
    from efficientdl.kernels.recurrent import slice_rows
    codes, codebook = _random_codes(np.random.default_rng(0), (8, 6), 0.5)
    with pytest.raises(ValueError, match="lookup twin"):
        slice_rows(cpu.pack_rows(codes, codebook, lookup=False))


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_one_compiled_layer_with_its_input_product_matches_torch(mode, batch, reverse):
    from efficientdl.kernels.recurrent import run_layer, slice_rows
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[mode]
    hidden, inputs, steps = 16, 9, 12
    if mode.startswith("rnn"):
        rnn = nn.RNN(inputs, hidden, nonlinearity=mode[4:])
    else:
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[mode](inputs, hidden)
    ih_codes, ih_book = _random_codes(rng, (gates * hidden, inputs), 0.4)
    hh_codes, hh_book = _random_codes(rng, (gates * hidden, hidden), 0.3)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(ih_book[ih_codes]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(hh_book[hh_codes]))
    x = torch.randn(steps, batch, inputs)
    h0 = torch.randn(1, batch, hidden)
    state = (h0, torch.randn(1, batch, hidden)) if mode == "lstm" else h0
    with torch.no_grad():
        expected, expected_state = rnn(x.flip(0) if reverse else x, state)
    if reverse:
        expected = expected.flip(0)
    hh = cpu.pack_rows(hh_codes, hh_book, lookup=True)
    for slices in (None, slice_rows(hh)):
        h = h0[0].numpy().copy()
        c = state[1][0].numpy().copy() if mode == "lstm" else None
        out = run_layer(mode, x.numpy(), h, c, cpu.pack_rows(ih_codes, ih_book), rnn.bias_ih_l0.detach().numpy(),
                        hh, rnn.bias_hh_l0.detach().numpy(), reverse=reverse, slices=slices)
        np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=2e-5)
        last = expected_state[0] if mode == "lstm" else expected_state
        np.testing.assert_allclose(h, last[0].numpy(), rtol=1e-5, atol=2e-5)
        if mode == "lstm":
            np.testing.assert_allclose(c, expected_state[1][0].numpy(), rtol=1e-5, atol=2e-5)


def test_run_layer_refuses_matrices_of_the_wrong_shape():
    from efficientdl.kernels.recurrent import run_layer, slice_rows
    rng = np.random.default_rng(0)
    ih = cpu.pack_rows(*_random_codes(rng, (8, 5), 0.5))
    hh = cpu.pack_rows(*_random_codes(rng, (8, 2), 0.5), lookup=True)
    h, c = np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32)
    x = np.zeros((3, 1, 4), np.float32)
    with pytest.raises(ValueError, match="input matrix"):
        run_layer("lstm", x, h, c, ih, None, hh, None)
    with pytest.raises(ValueError, match="state must be float32"):
        run_layer("lstm", np.zeros((3, 1, 5), np.float32), h.astype(np.float64), c, ih, None, hh, None)
    other = cpu.pack_rows(*_random_codes(rng, (16, 2), 0.5), lookup=True)
    with pytest.raises(ValueError, match="slices"):
        run_layer("lstm", np.zeros((3, 1, 5), np.float32), h, c, ih, None, hh, None, slices=slice_rows(other))
