"""Truncated SVD of fully connected layers: error equals the discarded singular values,
rank criteria by hand, and the factorised model computes W_r x + b."""

import math

import pytest
import torch
from torch import nn

from efficientdl.compress.lowrank.svd import choose_rank, low_rank, svd_linear
from efficientdl.errors import RecipeError


@pytest.mark.parametrize("rank", [1, 5, 20, 40])
def test_error_equals_discarded_singular_values(rank):
    torch.manual_seed(rank)
    layer = nn.Linear(60, 40)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    factored, info = svd_linear(layer, rank=rank)
    w_r = (factored[1].weight.double() @ factored[0].weight.double()).detach()
    diff = layer.weight.detach().double() - w_r
    assert info["frobenius_error"] == pytest.approx(math.sqrt(float((s[rank:] ** 2).sum())), rel=1e-5, abs=1e-6)
    assert float(torch.linalg.matrix_norm(diff)) == pytest.approx(info["frobenius_error"], rel=1e-4, abs=1e-5)
    if rank < 40:
        assert float(torch.linalg.matrix_norm(diff, ord=2)) == pytest.approx(float(s[rank]), rel=1e-4)
    assert info["params_after"] == rank * 100 and info["params_before"] == 2400
    x = torch.randn(3, 60)
    torch.testing.assert_close(factored(x).double(), x.double() @ w_r.t() + layer.bias.double(),
                               rtol=1e-4, atol=1e-5)


def test_rank_criteria_by_hand():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])          # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, 10, 4, rank=9) == 4
    assert choose_rank(s, 10, 4, energy=16 / 22) == 1
    assert choose_rank(s, 10, 4, energy=0.9) == 2      # 20/22 = 0.909
    assert choose_rank(s, 10, 4, energy=1.0) == 4
    assert choose_rank(s, 784, 300, reduction=4) == 54   # 54 · 1084 = 58,536 ≤ 235,200 / 4
    for kwargs in ({}, {"rank": 2, "energy": 0.5}, {"rank": 0}, {"energy": 1.5}, {"reduction": 0.5}):
        with pytest.raises(RecipeError):
            choose_rank(s, 10, 4, **kwargs)


def test_low_rank_on_a_model_per_layer():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    model, report = low_rank(model, rank={"0": 5})
    assert list(report) == ["0"] and report["0"]["rank"] == 5
    assert isinstance(model[0], nn.Sequential) and isinstance(model[2], nn.Linear)
    assert model(torch.randn(2, 20)).shape == (2, 10)


def test_factorised_model_survives_file_and_checkpoint_round_trip(tmp_path):
    from efficientdl import format as fmt, models, train

    torch.manual_seed(0)
    model = models.create("lenet300")
    model, report = low_rank(model, rank={"fc1": 17, "fc2": 9})
    assert model.edl_arch["transforms"] == [{"op": "svd", "ranks": {"fc1": 17, "fc2": 9}}]
    x = torch.randn(5, 1, 28, 28)
    expected = model.eval()(x)
    fmt.save(model, tmp_path / "m.edlz", coding="fixed")
    rebuilt = fmt.load(tmp_path / "m.edlz")
    assert rebuilt.fc1[0].weight.shape == (17, 784) and rebuilt.fc2[1].weight.shape == (100, 9)
    assert torch.equal(rebuilt(x), expected)
    train.save_checkpoint(model, tmp_path / "m.pt")
    assert torch.equal(train.load_checkpoint(tmp_path / "m.pt")(x), expected)


def test_unknown_transform_is_refused_in_one_line():
    from efficientdl import models
    from efficientdl.errors import ModelError

    arch = {"name": "lenet300", "kwargs": {}, "transforms": [{"op": "no-such-op"}]}
    with pytest.raises(ModelError, match="unknown transform 'no-such-op'"):
        models.rebuild(arch, "f.edlz")
    arch["transforms"] = [{"op": "svd", "ranks": {"no_layer": 3}}]
    with pytest.raises(ModelError):
        models.rebuild(arch, "f.edlz")
