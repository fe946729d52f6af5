"""``eie.simulate_layer``: one layer simulated, checked against dense math, and swept (what ``edl hw eie`` shows)."""

import numpy as np

from efficientdl.hardware import eie


def test_simulate_layer_matches_dense_math_and_simulate():
    codes, codebook, act = eie.random_layer(120, 200, 0.2, 0.5, seed=3)
    bias = np.linspace(-1, 1, 120)
    r = eie.simulate_layer(codes, codebook, act, bias, pes=4, fifo_depth=8)
    config = eie.config_for_codebook(len(codebook), pes=4, fifo_depth=8)
    direct = eie.simulate(eie.encode_layer(codes, codebook, config, bias), act, config)
    assert r["cycles"] == direct.cycles and r["efficiency"] == direct.efficiency
    assert r["max_rel_error"] < 1e-12
    assert (r["rows"], r["cols"]) == (120, 200)
    assert r["weight_density"] == np.count_nonzero(codes) / codes.size
    assert "sweep" not in r


def test_sweeps_cover_the_requested_points():
    codes, codebook, act = eie.random_layer(64, 96, 0.3, 0.6, seed=0)
    r = eie.simulate_layer(codes, codebook, act, pes=4, sweep=True, fifo_depths=(2, 8, 32), pes_list=(1, 2, 4))
    s = r["sweep"]
    assert [d for d, _ in s["fifo_efficiency"]] == [2, 8, 32]
    assert [n for n, _ in s["pe_speedup"]] == [1, 2, 4] and s["pe_speedup"][0][1] == 1.0
    assert all(0 < e <= 1 for _, e in s["fifo_efficiency"] + s["pe_efficiency"])
    # a deeper FIFO never stalls the broadcast more
    effs = [e for _, e in s["fifo_efficiency"]]
    assert effs == sorted(effs)
    # more PEs are faster on this layer
    speed = [v for _, v in s["pe_speedup"]]
    assert speed == sorted(speed) and speed[-1] > 1
