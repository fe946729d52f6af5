"""The method comparison: hand-counted multiplies, the Pareto front, and a small run whose
sizes and ratios are checked against the files on disk."""

import pytest
import torch

from efficientdl import data, models
from efficientdl.compress.methods import compare_methods, pareto_front, stored_macs
from efficientdl.compress.pruning.prune import apply_mask
from efficientdl.errors import RecipeError


def test_stored_macs_hand_counted_for_lenet5():
    model = models.create("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    # conv1 20·1·5·5 weights at 24×24, conv2 50·20·5·5 at 8×8, fc1 800·500, fc2 500·10
    dense = 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10
    assert stored_macs(model, torch.zeros(1, 1, 28, 28)) == (dense, dense)
    mask = torch.zeros_like(model.fc1.weight)
    mask[:, :8] = 1                                           # 500 · 8 weights left
    apply_mask(model.fc1, mask)
    assert stored_macs(model, torch.zeros(1, 1, 28, 28)) == (dense - 800 * 500 + 500 * 8, dense)


def test_pareto_front_hand_worked():
    rows = [{"method": "a", "file_bytes": 100, "accuracy": 0.90},
            {"method": "b", "file_bytes": 50, "accuracy": 0.89},
            {"method": "c", "file_bytes": 60, "accuracy": 0.88},      # dominated by b
            {"method": "d", "file_bytes": 10, "accuracy": 0.70},
            {"method": "e", "file_bytes": 100, "accuracy": 0.85}]     # dominated by a (and b)
    assert pareto_front(rows) == ["d", "b", "a"]


def test_small_comparison_measures_real_files(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = data.load("digits", batch_size=64, train_subset=256, test_subset=128)
    model = models.create("lenet300")
    rows = compare_methods(model, ds.train, ds.test, methods=["fp32", "prune", "int8", "low-rank+fixed-point"],
                           epochs=0, out_dir=tmp_path, latency_repeat=5)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["fp32", "prune", "int8", "low-rank+fixed-point"]
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    for name, r in by.items():
        assert r["file_bytes"] == (tmp_path / f"{name}.edlz").stat().st_size
        assert r["ratio"] == pytest.approx(fp32_bytes / r["file_bytes"])
        assert 0 <= r["accuracy"] <= 1 and r["latency_us"] > 0
    assert by["fp32"]["macs"] == by["fp32"]["dense_macs"] == 784 * 300 + 300 * 100 + 100 * 10
    assert by["prune"]["macs"] == pytest.approx(0.1 * by["fp32"]["macs"], rel=0.01)   # 90% of fc weights pruned
    assert by["int8"]["ratio"] > 3.5                                   # 8-bit codes, Huffman coded
    rank = (784 * 300 // 4) // (784 + 300)                             # fc1 with 4× fewer parameters
    assert by["low-rank+fixed-point"]["dense_macs"] == rank * (784 + 300) + 300 * 100 + 100 * 10


def test_unknown_method_is_refused():
    ds = data.load("digits", batch_size=64, train_subset=64, test_subset=64)
    with pytest.raises(RecipeError, match="unknown method 'magic'"):
        compare_methods(models.create("lenet300"), ds.train, ds.test, methods=["magic"])


def test_pruning_in_the_comparison_reaches_recurrent_layers(tmp_path):
    ds = data.load("digits", batch_size=64, train_subset=128, test_subset=64)
    rows = compare_methods(models.create("lstm", hidden_size=16), ds.train, ds.test, methods=["fp32", "prune"],
                           epochs=0, out_dir=tmp_path, latency_repeat=2)
    from efficientdl import format as fmt

    tensors = fmt.read(tmp_path / "prune.edlz").tensors
    for gates in ("lstm.weight_hh_l0", "lstm.weight_ih_l0"):          # 90% of the gate matrices pruned
        assert int((tensors[gates] != 0).sum()) == round(0.1 * tensors[gates].numel())
    assert rows[1]["ratio"] > 2 * rows[0]["ratio"]
