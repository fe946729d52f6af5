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
