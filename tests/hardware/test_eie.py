"""The EIE model: exact outputs against dense math, cycle counts traced by hand, FIFO
stalls, and bad configurations."""

import numpy as np
import pytest

from efficientdl.hardware import HardwareError
from efficientdl.hardware.eie import EIEConfig, encode_layer, random_layer, simulate


@pytest.mark.parametrize("pes", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("depth", [2, 4, 8])
@pytest.mark.parametrize("rows,cols,wd,ad", [(37, 23, 0.3, 0.5), (200, 60, 0.02, 1.0), (5, 90, 0.9, 0.1)])
def test_output_equals_dense_math(pes, depth, rows, cols, wd, ad):
    codes, codebook, act = random_layer(rows, cols, wd, ad, seed=rows + pes)
    bias = np.random.default_rng(0).normal(size=rows) * (np.arange(rows) % 3 == 0)
    cfg = EIEConfig(pes=pes, fifo_depth=depth)
    r = simulate(encode_layer(codes, codebook, cfg, bias=bias), act, cfg)
    np.testing.assert_allclose(r.output, codebook[codes] @ act + bias, rtol=1e-12, atol=1e-12)
    assert r.busy_cycles.sum() + r.idle_cycles.sum() == pes * r.cycles
    assert 0 < r.efficiency <= r.utilisation <= 1 or r.effective_nonzeros == 0


def test_negative_activations_are_skipped_like_relu_inputs():
    codes, codebook, act = random_layer(20, 30, 0.5, 1.0, seed=3)
    act[::2] *= -1
    cfg = EIEConfig(pes=4)
    r = simulate(encode_layer(codes, codebook, cfg), act, cfg)
    np.testing.assert_allclose(r.output, codebook[codes] @ np.maximum(act, 0), atol=1e-12)


def test_hand_traced_two_pe_example():
    # rows 0, 1 → PE 0, PE 1.  Column 0: both rows; column 1: row 0; column 2: row 1; all activations 1.
    # Broadcasts at cycles 1 (col 0), 2 (col 1), 3 (col 2), 5 (bias); PE 0 computes at cycles 3 and 4,
    # PE 1 at cycles 3 and 5; the last entry's pointer cycle is 5, so the layer ends at 5 + 6 = 11.
    codes = np.array([[1, 2, 0], [3, 0, 1]])
    codebook = np.array([0.0, 0.5, -1.0, 2.0])
    cfg = EIEConfig(pes=2, fifo_depth=8)
    r = simulate(encode_layer(codes, codebook, cfg), np.ones(3), cfg)
    assert r.cycles == 11
    assert r.busy_cycles.tolist() == [2, 2] and r.stall_cycles == 0
    assert r.output.tolist() == [0.5 - 1.0, 2.0 + 0.5]
    assert r.effective_nonzeros == 4 and r.efficiency == pytest.approx(4 / 2 / 11)


def test_padding_entries_bridge_long_gaps():
    # one PE, a column with rows 0 and 40: gap 39 = 2 paddings of 16 rows + an entry with index 7
    codes = np.zeros((41, 1), np.int64)
    codes[0, 0] = codes[40, 0] = 1
    cfg = EIEConfig(pes=1)
    layer = encode_layer(codes, np.array([0.0, 1.5]), cfg)
    assert np.diff(layer.ptr[0]).tolist() == [4, 0]                       # column 0, empty bias column
    assert [int(e) >> 4 for e in layer.entries] == [0, 15, 15, 7]
    r = simulate(layer, np.ones(1), cfg)
    assert r.entries_processed == 4 and r.effective_nonzeros == 2
    assert r.output[[0, 40]].tolist() == [1.5, 1.5]


def test_a_full_fifo_stalls_the_broadcast():
    # PE 0 owns a dense row, PE 1 nothing: with depth 2 (one slot) the broadcast waits for PE 0
    codes = np.zeros((2, 40), np.int64)
    codes[0] = 1
    codes[0, ::2] = 2
    layer_args = (codes, np.array([0.0, 1.0, -1.0]))
    shallow = simulate(encode_layer(*layer_args, EIEConfig(pes=2, fifo_depth=2)), np.ones(40),
                       EIEConfig(pes=2, fifo_depth=2))
    deep = simulate(encode_layer(*layer_args, EIEConfig(pes=2, fifo_depth=64)), np.ones(40),
                    EIEConfig(pes=2, fifo_depth=64))
    assert shallow.stall_cycles > 0 and deep.stall_cycles == 0
    assert shallow.cycles >= deep.cycles
    np.testing.assert_array_equal(shallow.output, deep.output)


def test_efficiency_grows_with_fifo_depth():
    codes, codebook, act = random_layer(600, 400, 0.1, 1.0, seed=1)
    effs = []
    for depth in (2, 4, 8, 32):
        cfg = EIEConfig(pes=16, fifo_depth=depth)
        effs.append(simulate(encode_layer(codes, codebook, cfg), act, cfg).efficiency)
    assert effs == sorted(effs) and effs[-1] > effs[0]


def test_bad_configurations_and_inputs():
    with pytest.raises(HardwareError, match="pes"):
        EIEConfig(pes=0)
    with pytest.raises(HardwareError, match="fifo_depth"):
        EIEConfig(fifo_depth=1)
    with pytest.raises(HardwareError, match="clock"):
        EIEConfig(clock_hz=-1.0)
    with pytest.raises(HardwareError, match="index_bits"):
        EIEConfig(index_bits=5)
    codes, codebook, act = random_layer(8, 6, 0.5, 1.0)
    layer = encode_layer(codes, codebook, EIEConfig(pes=2))
    with pytest.raises(HardwareError, match="activations"):
        simulate(layer, np.ones(5), EIEConfig(pes=2))
    with pytest.raises(HardwareError, match="encoded for 2 PEs"):
        simulate(layer, act, EIEConfig(pes=4))
    with pytest.raises(HardwareError, match="codebook"):
        encode_layer(codes, np.zeros(20), EIEConfig())
