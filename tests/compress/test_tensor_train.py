"""TT-SVD of fully connected layers: exact at full ranks, error within Oseledets' bounds,
automatic modes, model-level conversion and file round trips."""

import itertools
import math

import pytest
import torch
from torch import nn

from efficientdl.compress.lowrank.tensor_train import balanced_factors, tensor_train, tt_linear, tt_modes, tt_svd
from efficientdl.errors import RecipeError


def interleaved_by_loops(w, in_modes, out_modes):
    """A[i_1, j_1, …, i_d, j_d] = W[j, i] with row-major multi-indices, entry by entry."""
    d = len(in_modes)
    a = torch.empty([s for pair in zip(in_modes, out_modes) for s in pair], dtype=torch.float64)
    for i in itertools.product(*[range(m) for m in in_modes]):
        for j in itertools.product(*[range(n) for n in out_modes]):
            row = col = 0
            for k in range(d):
                row, col = row * out_modes[k] + j[k], col * in_modes[k] + i[k]
            a[tuple(x for pair in zip(i, j) for x in pair)] = w[row, col]
    return a


def unfolding_tail(a, k, rank):
    """Best rank-``rank`` error of the k-th unfolding (first k index pairs × the rest)."""
    s = torch.linalg.svdvals(a.reshape(math.prod(a.shape[:2 * k]), -1))
    return math.sqrt(float((s[rank:] ** 2).sum()))


@pytest.mark.parametrize("in_modes,out_modes", [([2, 3, 2], [3, 2, 2]), ([4, 3], [2, 5]), ([2, 2, 2, 2], [2, 1, 3, 2])])
def test_full_ranks_reproduce_the_weight(in_modes, out_modes):
    torch.manual_seed(0)
    layer = nn.Linear(math.prod(in_modes), math.prod(out_modes)).double()
    tt, info = tt_linear(layer, ranks=10_000, in_modes=in_modes, out_modes=out_modes)
    torch.testing.assert_close(tt.full_weight(), layer.weight.detach(), rtol=1e-10, atol=1e-10)
    assert info["error_bound"] == pytest.approx(0, abs=1e-10)
    x = torch.randn(4, layer.in_features, dtype=torch.float64)
    torch.testing.assert_close(tt(x), layer(x))


@pytest.mark.parametrize("ranks", [1, 2, [2, 4], [3, 1], [5, 3]])
def test_error_within_tt_svd_bounds(ranks):
    in_modes, out_modes = [2, 3, 2], [3, 2, 2]
    torch.manual_seed(7)
    w = torch.randn(12, 12, dtype=torch.float64)
    cores, info = tt_svd(w, in_modes, out_modes, ranks)
    layer = nn.Linear(12, 12).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    tt, report = tt_linear(layer, ranks=ranks, in_modes=in_modes, out_modes=out_modes)
    error = float(torch.linalg.norm(w - tt.full_weight().detach()))
    assert report["frobenius_error"] == pytest.approx(error, rel=1e-9)
    # Oseledets, Thm 2.2, with the algorithm's own step errors δ_k (equal here: orthogonal steps)
    assert error <= info["error_bound"] * (1 + 1e-9) + 1e-12
    assert error == pytest.approx(info["error_bound"], rel=1e-9)
    # and with the best-approximation errors ε_k of the unfoldings of W itself:
    # max_k ε_k ≤ ‖W − TT‖_F ≤ √(Σ_k ε_k²)
    a = interleaved_by_loops(w, in_modes, out_modes)
    eps = [unfolding_tail(a, k + 1, r) for k, r in enumerate(info["ranks"][1:-1])]
    assert max(eps) - 1e-9 <= error <= math.sqrt(sum(e * e for e in eps)) + 1e-9


def test_relative_error_target_is_met():
    torch.manual_seed(2)
    layer = nn.Linear(64, 36)
    for eps in (0.05, 0.3, 0.7):
        _, info = tt_linear(layer, relative_error=eps, in_modes=[4, 4, 4], out_modes=[3, 3, 4])
        assert info["relative_error"] <= eps + 1e-6
    _, loose = tt_linear(layer, relative_error=0.7, in_modes=[4, 4, 4], out_modes=[3, 3, 4])
    _, tight = tt_linear(layer, relative_error=0.05, in_modes=[4, 4, 4], out_modes=[3, 3, 4])
    assert loose["params_after"] < tight["params_after"]


def test_automatic_modes_and_counts_by_hand():
    assert balanced_factors(784, 4) == [4, 4, 7, 7]
    assert balanced_factors(300, 3) == [5, 6, 10]
    assert balanced_factors(300, 4) == [3, 4, 5, 5]
    assert tt_modes(784, 300) == ([7, 7, 4, 4], [3, 4, 5, 5])
    assert tt_modes(100, 10) == ([10, 10], [2, 5])       # 10 has only two prime factors
    layer = nn.Linear(784, 300)
    tt, info = tt_linear(layer, ranks=8)
    assert info["ranks"] == [1, 8, 8, 8, 1]
    # cores 1·7·3·8 + 8·7·4·8 + 8·4·5·8 + 8·4·5·1
    assert info["params_after"] == 168 + 1792 + 1280 + 160 == tt.weight_count()
    # steps: 1·(1·7·3·8)·112 + 3·(8·7·4·8)·16 + 12·(8·4·5·8)·4 + 60·(8·4·5·1)·1
    assert info["macs_after"] == 18816 + 86016 + 61440 + 9600
    assert info["params_before"] == info["macs_before"] == 235_200


def test_model_level_conversion_and_round_trip(tmp_path):
    from efficientdl import format as fmt, models, train
    from efficientdl.compress.lowrank.svd import low_rank
    from efficientdl.nn import TTLinear

    torch.manual_seed(0)
    model = models.create("lenet300")
    model, report = tensor_train(model, ranks={"fc1": 6, "fc2": [2, 3, 2]})
    model, _ = low_rank(model, rank={"fc3": 4})
    assert list(report) == ["fc1", "fc2"] and isinstance(model.fc1, TTLinear)
    assert report["fc2"]["ranks"] == [1, 2, 3, 2, 1]
    assert model.edl_arch["transforms"][0] == {"op": "tt", "layers": {
        "fc1": {"in_modes": [7, 7, 4, 4], "out_modes": [3, 4, 5, 5], "ranks": [1, 6, 6, 6, 1]},
        "fc2": {"in_modes": [5, 5, 4, 3], "out_modes": [2, 2, 5, 5], "ranks": [1, 2, 3, 2, 1]}}}
    x = torch.randn(4, 1, 28, 28)
    expected = model.eval()(x)
    fmt.save(model, tmp_path / "m.edlz", coding="fixed")
    rebuilt = fmt.load(tmp_path / "m.edlz")
    assert isinstance(rebuilt.fc1, TTLinear) and rebuilt.fc1.ranks == [1, 6, 6, 6, 1]
    assert torch.equal(rebuilt(x), expected)
    train.save_checkpoint(model, tmp_path / "m.pt")
    assert torch.equal(train.load_checkpoint(tmp_path / "m.pt")(x), expected)


def test_a_recorded_layer_that_does_not_fit_is_refused():
    from efficientdl import models
    from efficientdl.errors import ModelError

    arch = {"name": "lenet300", "kwargs": {}, "transforms": [
        {"op": "tt", "layers": {"fc1": {"in_modes": [7, 7, 4, 4], "out_modes": [2, 5, 5, 5],
                                        "ranks": [1, 2, 2, 2, 1]}}}]}
    with pytest.raises(ModelError, match="does not fit"):
        models.rebuild(arch, "f.edlz")


@pytest.mark.parametrize("call,message", [
    (lambda m: tensor_train(m, ranks=4, layers=["fc9"]), "'fc9' is not an nn.Linear layer"),
    (lambda m: tensor_train(m, ranks=0, layers=["fc1"]),
     "layer 'fc1': TT ranks \\[0, 0, 0\\]: every rank must be an integer ≥ 1"),
    (lambda m: tensor_train(m, ranks=4, in_modes={"fc1": [28, 28]}, out_modes={"fc1": [10, 3]}),
     "layer 'fc1': .*do not multiply"),
    (lambda m: tensor_train(m, ranks=4, in_modes={"fc1": [28, 28]}, layers=["fc1"]), "both in_modes and out_modes"),
    (lambda m: tensor_train(m, relative_error=1.5, layers=["fc1"]), "relative_error must be in"),
    (lambda m: tt_linear(nn.Linear(4, 4), 2, in_modes=[-2, -2], out_modes=[2, 2]), "must be positive"),
    (lambda m: tt_linear(nn.Linear(797, 10), ranks=4), "797 has the prime factor 797 > 64"),
    (lambda m: tt_linear(nn.Linear(20, 10)), "give ranks, relative_error or both"),
    (lambda m: balanced_factors(12, 3, max_prime=2), "prime factor 3 > 2"),
    (lambda m: tt_modes(784, 300, cores=0), "cores must be a positive integer"),
])
def test_bad_input_is_refused_in_one_line(call, message):
    from efficientdl import models

    with pytest.raises(RecipeError, match=message) as info:
        call(models.create("lenet300"))
    assert "\n" not in str(info.value)
