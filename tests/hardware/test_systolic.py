"""The systolic array: the cycle-stepped model computes x @ w and takes the analytic
number of cycles; GEMM tiling and memory stalls by hand."""

import math

import numpy as np
import pytest

from efficientdl.hardware import HardwareError
from efficientdl.hardware.systolic import (SystolicConfig, layer_gemm, simulate_gemm, simulate_layers,
                                           simulate_tile, tile_cycles)
from efficientdl.hardware.workload import LayerWorkload


@pytest.mark.parametrize("m,r,c", [(1, 1, 1), (1, 4, 4), (3, 4, 5), (7, 2, 3), (10, 8, 8), (5, 1, 6), (2, 6, 1)])
def test_cycle_stepped_array_computes_the_product_in_the_analytic_time(m, r, c):
    rng = np.random.default_rng(m * 100 + r * 10 + c)
    x, w = rng.normal(size=(m, r)), rng.normal(size=(r, c))
    y, cycles = simulate_tile(x, w)
    np.testing.assert_allclose(y, x @ w, rtol=1e-12, atol=1e-12)
    assert cycles == tile_cycles(m, r, c) == m + r + c - 2


def test_gemm_tiling_and_stalls_by_hand():
    cfg = SystolicConfig(rows=4, cols=4, clock_hz=1e9, bandwidth_bytes_per_s=1e9, weight_bytes=1)
    # K = 10, N = 6 → tiles of 4/4/2 rows × 4/2 columns: 16, 8, 16, 8, 8, 4 bytes = cycles to fetch;
    # a tile computes in M + 4 + 4 − 2 = 8 cycles; the first fetch is exposed
    r = simulate_gemm(2, 10, 6, cfg)
    assert r.tiles == 6 and r.compute_cycles == 6 * 8 and r.fetch_cycles == 16 + 8 + 16 + 8 + 8 + 4
    assert r.total_cycles == 16 + (16 + 8 + 16 + 8 + 8 + 8) and r.bound == "memory"
    assert r.utilisation == pytest.approx(2 * 10 * 6 / (r.total_cycles * 16))
    big = simulate_gemm(100, 10, 6, cfg)                      # long tiles hide the fetch
    assert big.total_cycles == 16 + 6 * 106 and big.bound == "compute" and big.stall_cycles == 16
    assert simulate_gemm(0, 10, 6, cfg).total_cycles == 0


def test_tpu_small_batches_stay_far_below_the_roof():
    small = simulate_gemm(8, 2048, 2048)
    large = simulate_gemm(4096, 2048, 2048)
    assert small.bound == "memory" and small.utilisation < 0.01
    assert large.bound == "compute" and large.utilisation > 0.8
    assert SystolicConfig().peak_ops == pytest.approx(2 * 256 * 256 * 700e6)      # ≈ 92 TOPS


def test_layer_gemm_shapes():
    fc = LayerWorkload("fc", "fc", 784 * 300, 784 * 300, 784 * 300, 32, 784, 300)
    assert layer_gemm(fc, 8) == (8, 784, 300)
    conv = LayerWorkload("conv", "conv", 20 * 25 * 24 * 24, 20 * 25, 20 * 25, 32, 784, 20 * 24 * 24)
    assert layer_gemm(conv, 2) == (2 * 576, 25, 20)
    rows = simulate_layers([fc, conv], batch=2)
    assert [r["name"] for r in rows] == ["fc", "conv"] and rows[1]["m"] == 1152
    assert rows[0]["tiles"] == math.ceil(784 / 256) * math.ceil(300 / 256)


def test_invalid_configurations():
    with pytest.raises(HardwareError, match="rows"):
        SystolicConfig(rows=0)
    with pytest.raises(HardwareError, match="bandwidth"):
        SystolicConfig(bandwidth_bytes_per_s=-1.0)
    with pytest.raises(HardwareError, match="dimension"):
        simulate_gemm(-1, 2, 2)
    with pytest.raises(HardwareError, match="batch"):
        simulate_layers([], batch=0)


def test_cli_systolic(tmp_path, capsys):
    import json

    import torch

    from efficientdl import models
    from efficientdl.cli.main import main
    from efficientdl.train import save_checkpoint

    ckpt = tmp_path / "lenet5.pt"
    torch.manual_seed(0)
    save_checkpoint(models.create("lenet5"), ckpt)
    assert main(["hw", "systolic", str(ckpt), "--batch", "4", "--data", "digits", "--test-subset", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in d["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    fc1 = d["layers"][2]
    assert (fc1["m"], fc1["k"], fc1["n"]) == (4, 800, 500)
    assert d["total_cycles"] == sum(l["total_cycles"] for l in d["layers"])


def test_accumulator_capacity_splits_long_inputs_into_passes():
    cfg = SystolicConfig(rows=4, cols=4, clock_hz=1e9, bandwidth_bytes_per_s=1e9, accumulator_bytes=4 * 4 * 10)
    r = simulate_gemm(25, 4, 4, cfg)                  # 10 rows per pass: passes of 10, 10, 5
    assert r.tiles == 3 and r.compute_cycles == (10 + 6) * 2 + (5 + 6)
    assert r.total_cycles == 16 + 16 + 16 + 16 and r.fetch_cycles == 48
    assert simulate_gemm(8, 2048, 2048).activations_fit
    assert not simulate_gemm(10_000, 2048, 2048).activations_fit
