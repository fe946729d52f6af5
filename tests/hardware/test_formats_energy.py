"""Number formats against torch/numpy casts and hand-computed ranges; the energy table."""

import numpy as np
import pytest
import torch

from efficientdl.hardware import (BF16, FP16, FP32, HOROWITZ_45NM, INT8, INT16, HardwareError, fixed_point,
                                  get_format, load_table)


def test_ranges_by_hand():
    assert FP16.max_value == 65504.0 and FP16.min_normal == 2.0 ** -14 and FP16.min_positive == 2.0 ** -24
    assert FP16.epsilon == 2.0 ** -10
    assert FP32.max_value == float(np.finfo(np.float32).max) and FP32.epsilon == float(np.finfo(np.float32).eps)
    assert FP32.min_positive == float(np.finfo(np.float32).smallest_subnormal)
    assert BF16.max_value == float(torch.finfo(torch.bfloat16).max) and BF16.epsilon == 2.0 ** -7
    assert BF16.min_normal == float(torch.finfo(torch.bfloat16).tiny)
    assert (INT8.min_value, INT8.max_value, INT8.epsilon) == (-128, 127, 1)
    q = fixed_point(3, 4)                         # Q3.4: 8 bits, step 1/16, range [-8, 8 - 1/16]
    assert (q.bits, q.min_value, q.max_value, q.epsilon) == (8, -8.0, 7.9375, 0.0625)
    assert get_format("Q3.4") == q and get_format("int16") is INT16


@pytest.mark.parametrize("fmt,dtype", [(FP16, torch.float16), (BF16, torch.bfloat16), (FP32, torch.float32)])
def test_float_emulation_equals_torch_cast_in_range(fmt, dtype):
    x = torch.randn(10_000, dtype=torch.float64) * torch.logspace(-6, 4, 10_000, dtype=torch.float64)
    x = x.float()
    expected = x.to(dtype).float()
    torch.testing.assert_close(fmt.quantize(x), expected, rtol=0, atol=0)


def test_float_saturates_instead_of_overflowing():
    x = torch.tensor([1e6, -1e6, float("inf"), float("-inf"), float("nan"), 65504.0])
    y = FP16.quantize(x)
    assert y[:4].tolist() == [65504.0, -65504.0, 65504.0, -65504.0]
    assert torch.isnan(y[4]) and y[5] == 65504.0


def test_int_and_fixed_rounding_by_hand():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 127.4, 127.6, -128.6, 300.0])
    assert INT8.quantize(x).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, 127.0, -128.0, 127.0]
    q = fixed_point(1, 2)                         # Q1.2: values k/4, k in [-8, 7]
    x = torch.tensor([0.3, 0.375, 0.125, -2.5, 1.9, 5.0])
    assert q.quantize(x).tolist() == [0.25, 0.5, 0.0, -2.0, 1.75, 1.75]
    assert q.to_integer(x).tolist() == [1, 2, 0, -8, 7, 7]
    assert q.to_integer(x).dtype == torch.int8


def test_fixed_point_matches_numpy_and_is_idempotent():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 3, 5000)
    q = fixed_point(2, 5)
    expected = np.clip(np.round(v * 32), -128, 127) / 32          # numpy rounds half to even too
    got = q.quantize(torch.from_numpy(v))
    np.testing.assert_array_equal(got.numpy(), expected)
    torch.testing.assert_close(q.quantize(got), got, rtol=0, atol=0)
    for fmt in (FP16, BF16, INT8):
        once = fmt.quantize(torch.from_numpy(v).float())
        torch.testing.assert_close(fmt.quantize(once), once, rtol=0, atol=0)


def test_costs_from_the_45nm_table():
    assert FP32.energy_pj("mult") == 3.7 and FP32.energy_pj("add") == 0.9
    assert INT8.energy_pj("mult") == 0.2 and fixed_point(3, 4).energy_pj("add") == 0.03
    assert FP16.area_um2("mult") == 1640 and BF16.energy_pj("add") is None
    assert HOROWITZ_45NM.relative_cost("dram_read_32b") == pytest.approx(6400)
    assert HOROWITZ_45NM.relative_cost("dram_read_32b", "fp32_mult") == pytest.approx(640 / 3.7)


def test_bad_formats_and_tables(tmp_path):
    with pytest.raises(HardwareError, match="unknown number format"):
        get_format("fp8")
    with pytest.raises(HardwareError, match="bits"):
        fixed_point(40, 40)
    with pytest.raises(HardwareError, match="floating"):
        INT8.quantize(torch.ones(3, dtype=torch.int32))
    with pytest.raises(HardwareError, match="no such file"):
        load_table(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("energy_pj: {int8_add: -1}\n")
    with pytest.raises(HardwareError, match="positive"):
        load_table(bad)
    bad.write_text("energy_pj: {int9_add: 1}\n")
    with pytest.raises(HardwareError, match="unknown operation"):
        load_table(bad)
    bad.write_text("energy_pj: {int8_add: 1}\n")
    with pytest.raises(HardwareError, match="lacks"):
        load_table(bad)


def test_table_from_yaml_round_trip(tmp_path):
    import yaml

    path = tmp_path / "node.yaml"
    energy = {k: v / 2 for k, v in HOROWITZ_45NM.energy_pj.items()}
    path.write_text(yaml.safe_dump({"name": "half", "source": "test", "energy_pj": energy}))
    table = load_table(path)
    assert table.name == "half" and table.energy("dram_read_32b") == 320.0
    assert FP32.energy_pj("mult", table) == 1.85


def test_inference_energy_by_hand():
    from efficientdl.hardware.energy import inference_energy
    from efficientdl.hardware.workload import LayerWorkload

    # 100 fp32 weights (400 B), 100 MACs, 10 inputs + 10 outputs
    dense = [LayerWorkload("fc", "fc", 100, 100, 100, 32, 10, 10)]
    e = inference_energy(dense, batch=1, on_chip_bytes=1000)
    assert e.weights_on_chip
    assert e.arithmetic_pj == pytest.approx(100 * (3.7 + 0.9))
    assert e.on_chip_pj == pytest.approx(100 * 5 + 20 * 5) and e.dram_pj == 0
    e = inference_energy(dense, batch=4, on_chip_bytes=100)               # does not fit: DRAM, shared by 4
    assert not e.weights_on_chip and e.dram_pj == pytest.approx(100 * 640 / 4)
    assert e.on_chip_pj == pytest.approx(20 * 5)
    sparse = [LayerWorkload("fc", "fc", 100, 100, 10, 8, 10, 10, input_density=0.5)]   # 10 B of weights
    e = inference_energy(sparse, on_chip_bytes=100, arithmetic="int8", skip_zeros=True)
    assert e.arithmetic_pj == pytest.approx(100 * 0.1 * 0.5 * (0.2 + 0.03))
    assert e.on_chip_pj == pytest.approx(10 / 4 * 5 + 20 * 5)
    with pytest.raises(HardwareError, match="batch"):
        inference_energy(dense, batch=0)
