"""Hessian-weighted k-means (Choi et al., ICLR'17) and GPTQ-style compensation of weight sharing,
against scikit-learn, repeated points, a dense sequential-OBS reference and direct output errors."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from efficientdl import format as fmt
from efficientdl.compress.calibration import Statistics, collect_statistics
from efficientdl.compress.pruning.prune import prune_once
from efficientdl.compress.quantization import QUANTIZERS, quantize
from efficientdl.compress.quantization.share import (SharedWeight, compensated_indices, hessian_importance, kmeans_1d,
                                                     share, share_layer, shared_weight)
from efficientdl.compress.recipe import validate
from efficientdl.errors import RecipeError


def weights_sample(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-0.08, 0.03, n // 2), rng.normal(0.07, 0.04, n - n // 2)]).astype(np.float32)


def weighted_objective(x, h, centroids):
    x = np.asarray(x, np.float64)[:, None]
    return float((np.asarray(h, np.float64) * np.min((x - np.asarray(centroids, np.float64)[None, :]) ** 2,
                                                     axis=1)).sum())


# --------------------------------------------------------------------------- weighted k-means
@pytest.mark.parametrize("init,k", [("linear", 4), ("linear", 8), ("density", 6)])
def test_weighted_kmeans_agrees_with_sklearn(init, k):
    x = weights_sample(400, seed=k)
    h = np.random.default_rng(k).lognormal(0.0, 1.5, x.size)
    start, _ = kmeans_1d(x, k, init=init, max_iter=0, sample_weight=h)
    centroids, labels = kmeans_1d(x, k, init=init, max_iter=1000, tol=0.0, sample_weight=h)
    ref = KMeans(n_clusters=k, init=start.astype(np.float64).reshape(-1, 1), n_init=1, algorithm="lloyd",
                 tol=0, max_iter=1000).fit(x.astype(np.float64).reshape(-1, 1), sample_weight=h)
    span = float(x.max() - x.min())
    np.testing.assert_allclose(centroids, np.sort(ref.cluster_centers_.ravel()), rtol=0, atol=1e-5 * span)
    assert weighted_objective(x, h, centroids) <= ref.inertia_ * (1 + 1e-6)
    # the centres are the weighted means of their clusters
    for j in np.unique(labels):
        sel = labels == j
        assert centroids[j] == pytest.approx(np.average(x[sel].astype(np.float64), weights=h[sel]), abs=1e-6)


def test_integer_weights_equal_repeated_points():
    x = weights_sample(300, seed=3)
    h = np.random.default_rng(3).integers(1, 5, x.size)
    rep = np.repeat(x, h)
    for k in (3, 7, 15):
        cw, lw = kmeans_1d(x, k, init="linear", sample_weight=h)
        cr, lr = kmeans_1d(rep, k, init="linear")
        np.testing.assert_allclose(cw, cr, rtol=0, atol=1e-7)
        first = np.concatenate([[0], np.cumsum(h)[:-1]])
        np.testing.assert_array_equal(lw, lr[first])


def test_weighted_density_init_is_the_inverse_weighted_cdf():
    x = weights_sample(301, seed=5)
    h = np.random.default_rng(5).integers(1, 4, x.size)
    h[0] += 1 - int(h.sum()) % 2  # an odd total: no level falls exactly on a step of the CDF
    k = 8
    c0, _ = kmeans_1d(x, k, init="density", max_iter=0, sample_weight=h)
    expected = np.quantile(np.repeat(x, h), (np.arange(k) + 0.5) / k, method="inverted_cdf")
    np.testing.assert_array_equal(c0, expected.astype(np.float32))


def test_weighting_lowers_the_weighted_objective():
    x = weights_sample(2000, seed=7)
    h = np.where(np.abs(x) < 0.05, 100.0, 0.1)  # small weights matter, as for a column with strong inputs
    for k in (3, 7):
        weighted, _ = kmeans_1d(x, k, sample_weight=h)
        plain, _ = kmeans_1d(x, k)
        assert weighted_objective(x, h, weighted) < 0.9 * weighted_objective(x, h, plain)


def test_zero_weights_get_labels_and_do_not_pull_centroids():
    x = weights_sample(500, seed=8)
    x[:5] = [5.0, 4.0, -3.0, 6.0, 4.5]      # outliers of no importance
    h = np.ones(x.size)
    h[:5] = 0.0
    centroids, labels = kmeans_1d(x, 7, sample_weight=h)
    inner = x[5:]
    assert inner.min() <= centroids.min() and centroids.max() <= inner.max()
    assert labels.shape == x.shape and labels.min() >= 0 and labels.max() < 7
    d = np.abs(x.astype(np.float64) - centroids[labels])
    np.testing.assert_allclose(d, np.min(np.abs(x[:, None] - centroids[None, :].astype(np.float64)), axis=1),
                               atol=1e-7)
    # all weights zero: unit weights
    a, _ = kmeans_1d(x, 5, sample_weight=np.zeros(x.size))
    b, _ = kmeans_1d(x, 5)
    np.testing.assert_array_equal(a, b)


def test_unit_weights_give_the_unweighted_result():
    x = weights_sample(1000, seed=9)
    for init in ("linear", "random"):
        a, la = kmeans_1d(x, 15, init=init, seed=2, sample_weight=np.ones(x.size))
        b, lb = kmeans_1d(x, 15, init=init, seed=2)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(la, lb)


def test_no_empty_cluster_on_outliers_with_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.4, 4000)
    x[:3] = -61.0
    x[3:5] = 41.0
    x[5:8] = rng.uniform(-40, 30, 3)
    x = x.astype(np.float32)
    h = rng.lognormal(0.0, 1.0, x.size)
    k = 64
    start, _ = kmeans_1d(x, k, init="linear", max_iter=0, sample_weight=h)
    centroids, labels = kmeans_1d(x, k, init="linear", sample_weight=h)
    assert np.all(np.bincount(labels, weights=h, minlength=k) > 0)
    ref = KMeans(n_clusters=k, init=start.astype(np.float64).reshape(-1, 1), n_init=1, algorithm="lloyd",
                 max_iter=3000, tol=0.0).fit(x.astype(np.float64).reshape(-1, 1), sample_weight=h)
    # a Lloyd fixed point: each centre is the weighted mean of the values labelled with it
    for j in range(k):
        sel = labels == j
        assert centroids[j] == pytest.approx(np.average(x[sel].astype(np.float64), weights=h[sel]), abs=1e-5)
    # reseeding by h·err² (scikit-learn moves the farthest values, unweighted) reaches another local
    # optimum from the same start, within a few per cent
    assert weighted_objective(x, h, centroids) <= 1.25 * ref.inertia_


@pytest.mark.parametrize("bad", [np.full(10, -1.0), np.array([1.0] * 9 + [np.nan]), np.array([1.0] * 9 + [np.inf]),
                                 np.ones(9)])
def test_bad_sample_weights_are_refused(bad):
    with pytest.raises(RecipeError) as info:
        kmeans_1d(np.linspace(-1, 1, 10), 3, sample_weight=bad)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- layers
def badly_scaled_layer(seed=0, d_in=48, d_out=32, n=2000, rank=4):
    """A linear layer on correlated inputs whose columns differ by 10³ in norm, its weights
    inversely scaled (as training on unnormalised inputs leaves them)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1.5, 1.5, d_in)[torch.randperm(d_in, generator=g)]
    X = (torch.randn(n, rank, generator=g) @ torch.randn(rank, d_in, generator=g) / rank ** 0.5
         + 0.3 * torch.randn(n, d_in, generator=g)) * scales
    model = nn.Sequential(nn.Linear(d_in, d_out))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(d_out, d_in, generator=g) * 0.1 / scales)
    return model, X


def output_error(w, w_hat, X):
    """‖(W − Ŵ) X‖_F / ‖W X‖_F computed from the inputs themselves."""
    X = X.double().reshape(-1, X.shape[-1]).T
    return float(((w.double() - w_hat.double()) @ X).norm() / (w.double() @ X).norm())


def test_hessian_weighting_and_compensation_lower_the_output_error():
    model, X = badly_scaled_layer()
    batches = [X[i:i + 250] for i in range(0, X.shape[0], 250)]
    stats = collect_statistics(model, batches)
    w = model[0].weight.detach().clone()
    errors, reports = {}, {}
    for weighting, compensate in (("none", False), ("hessian", False), ("hessian", True)):
        m = copy.deepcopy(model)
        _, report = share(m, bits=3, weighting=weighting, statistics=stats, compensate=compensate)
        errors[weighting, compensate] = output_error(w, m[0].weight.detach(), X)
        reports[weighting, compensate] = report
        assert report.settings["weighting"] == weighting and report.settings["compensate"] is compensate
        assert report.settings["unweighted"] == []
        assert report.settings["reconstruction_error"]["0"] == pytest.approx(errors[weighting, compensate], rel=1e-6)
        assert torch.unique(m[0].weight.detach()).numel() <= 7
    assert errors["hessian", False] < 0.8 * errors["none", False]
    assert errors["hessian", True] < 0.9 * errors["hessian", False]


def dampened(H, damp):
    H = H.clone()
    return H + damp * float(torch.diagonal(H).mean()) * torch.eye(H.shape[0], dtype=H.dtype)


def sequential_obs_reference(W, H, codebook, damp):
    """GPTQ with a fixed codebook, written as Optimal Brain Surgeon on the remaining columns:
    after rounding column j, move the columns F = {> j} by −e · [H_R⁻¹]_{j,F} / [H_R⁻¹]_jj with
    R = {≥ j} (an explicit inverse per step, no Cholesky factor), masked by the kept weights."""
    W = W.double().clone()
    alive = W != 0
    Hd = dampened(H.double(), damp)
    code = torch.as_tensor(codebook, dtype=torch.float64)
    d = W.shape[1]
    idx = torch.zeros_like(W, dtype=torch.int64)
    for j in range(d):
        M = torch.linalg.inv(Hd[j:, j:])
        nearest = torch.argmin((W[:, j:j + 1] - code.reshape(1, -1)).abs(), dim=1)
        q = torch.where(alive[:, j], code[nearest], torch.zeros(()))
        e = W[:, j] - q
        W[:, j + 1:] -= (e.unsqueeze(1) * (M[0, 1:] / M[0, 0]).unsqueeze(0)) * alive[:, j + 1:]
        W[:, j] = q
        idx[:, j] = torch.where(alive[:, j], nearest + 1, torch.zeros_like(nearest))
    return idx, W


def test_compensation_equals_sequential_obs_and_keeps_pruned_zeros():
    g = torch.Generator().manual_seed(3)
    layer = nn.Linear(12, 8)
    X = torch.randn(300, 3, generator=g) @ torch.randn(3, 12, generator=g) + 0.2 * torch.randn(300, 12, generator=g)
    with torch.no_grad():
        w = torch.randn(8, 12, generator=g)
        w[torch.rand(8, 12, generator=g) < 0.4] = 0.0
        layer.weight.copy_(w)
    stats = collect_statistics(nn.Sequential(layer), [X])["0"]
    sw = share_layer(layer, bits=3, compensate_with=stats, damp=0.01)
    codebook, _ = kmeans_1d(w[w != 0].numpy(), 7)       # the codebook is plain k-means, fixed
    np.testing.assert_array_equal(sw.centroids.detach().numpy(), codebook)
    ref_idx, ref_w = sequential_obs_reference(w, stats.gram, codebook, 0.01)
    assert torch.equal(sw.indices, ref_idx)
    torch.testing.assert_close(layer.weight.detach().double(), ref_w, rtol=0, atol=1e-6)
    assert torch.equal(sw.indices == 0, w == 0) and torch.all(layer.weight.detach()[w == 0] == 0)
    # and it rounds differently from the nearest centroid, for a lower output error
    plain = nn.Linear(12, 8)
    with torch.no_grad():
        plain.weight.copy_(w)
    share_layer(plain, bits=3)
    assert not torch.equal(shared_weight(plain).indices, sw.indices)
    assert output_error(w, layer.weight.detach(), X) < output_error(w, plain.weight.detach(), X)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, groups=4, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


def smooth_images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 4, 4, 4, generator=g), size=(12, 12), mode="bilinear")
    return x * torch.tensor([0.1, 1.0, 3.0, 0.3]).reshape(1, 4, 1, 1)


def test_grouped_convolution_pruned_zeros_and_per_group_compensation():
    torch.manual_seed(0)
    net = ConvNet()
    prune_once(net, sparsity=0.5)
    x = smooth_images()
    stats = collect_statistics(net, [x[:12], x[12:]])
    zeros = {n: getattr(net, n).weight.detach() == 0 for n in ("conv", "dw", "fc")}
    before = {n: getattr(net, n).weight.detach().clone() for n in zeros}
    dw_in = torch.relu(net.conv(x)).detach()
    _, report = share(net, bits=3, weighting="hessian", statistics=stats, compensate=True)
    for name, z in zeros.items():
        sw = shared_weight(getattr(net, name))
        assert torch.equal(sw.indices == 0, z)
        assert torch.all(getattr(net, name).weight.detach()[z] == 0)
    # the depthwise layer's reported error is its output error, computed by the convolution itself
    w0, w1 = before["dw"], net.dw.weight.detach()
    direct = float(F.conv2d(dw_in, w0 - w1, padding=1, groups=4).norm()
                   / F.conv2d(dw_in, w0, padding=1, groups=4).norm())
    assert report.settings["reconstruction_error"]["dw"] == pytest.approx(direct, rel=1e-6)
    # per group: the same as compensating each group's rows alone with that group's Gram matrix
    s = stats["dw"]
    codebook = shared_weight(net.dw).centroids.detach().numpy()
    rows = w0.shape[0] // 4
    full, _ = compensated_indices(w0, codebook, s)
    for g in range(4):
        one = Statistics(s.count, s.gram[g], s.sq_norms[g], 1)
        part, _ = compensated_indices(w0[g * rows:(g + 1) * rows], codebook, one)
        assert torch.equal(full[g * rows:(g + 1) * rows], part)
    assert torch.equal(full, shared_weight(net.dw).indices)
    # the importance is diag H of the group each row multiplies
    h = hessian_importance(w0, s).reshape(8, -1)
    torch.testing.assert_close(h[5], s.sq_norms[5 // rows])


def test_hessian_codebook_is_the_weighted_kmeans_of_diag_h():
    model, X = badly_scaled_layer(seed=1, d_in=12, d_out=5, n=200)
    stats = collect_statistics(model, [X])
    w = model[0].weight.detach().clone()
    share(model, bits=2, weighting="hessian", statistics=stats)
    h = np.broadcast_to(torch.diagonal(stats["0"].gram).numpy(), w.shape).ravel()
    expected, _ = kmeans_1d(w.numpy().ravel(), 3, sample_weight=h)
    np.testing.assert_allclose(shared_weight(model[0]).centroids.detach().numpy(), expected, rtol=1e-6, atol=0)


def test_file_round_trip_and_same_parametrization_as_plain_sharing():
    torch.manual_seed(1)
    net = ConvNet()
    prune_once(net, sparsity=0.6)
    plain = copy.deepcopy(net)
    stats = collect_statistics(net, [smooth_images(16, seed=2)])
    share(net, bits=4, weighting="hessian", statistics=stats, compensate=True)
    share(plain, bits=4)
    for name in ("conv", "dw", "fc"):
        a, b = shared_weight(getattr(net, name)), shared_weight(getattr(plain, name))
        assert type(a) is type(b) is SharedWeight
        assert a.bits == b.bits == 4 and a.centroids.shape == b.centroids.shape == (15,)
        assert a.indices.dtype == b.indices.dtype and a.indices.shape == b.indices.shape
        assert a.centroids.requires_grad
        assert not getattr(net, name).parametrizations.weight.original.requires_grad
    for coding in ("huffman", "fixed"):
        data, _ = fmt.encode(net, arch=None, coding=coding, shared_layout="sparse")
        c = fmt.decode(data)
        for name in ("conv", "dw", "fc"):
            sw = shared_weight(getattr(net, name))
            assert torch.equal(c.tensors[f"{name}.weight"], getattr(net, name).weight.detach())
            idx, codebook = c.codebooks[f"{name}.weight"]
            np.testing.assert_array_equal(idx, sw.indices.numpy())
            np.testing.assert_array_equal(codebook[1:], sw.centroids.detach().numpy())
        fresh = ConvNet()
        fmt.load_into(fresh, c)
        x = smooth_images(3, seed=4)
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), net.eval()(x), rtol=0, atol=0)


class WithEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


def test_tensor_without_statistics_is_shared_plainly_and_listed():
    torch.manual_seed(0)
    net = WithEmbedding()
    plain = copy.deepcopy(net)
    tokens = torch.randint(0, 20, (16, 5), generator=torch.Generator().manual_seed(0))
    stats = collect_statistics(net, [tokens])
    assert "emb" not in stats
    _, report = share(net, bits=3, weighting="hessian", statistics=stats, compensate=True)
    share(plain, bits=3)
    assert report.settings["unweighted"] == ["emb"]
    assert set(report.settings["reconstruction_error"]) == {"fc"}
    assert torch.equal(shared_weight(net.emb).indices, shared_weight(plain.emb).indices)
    assert torch.equal(shared_weight(net.emb).centroids, shared_weight(plain.emb).centroids)


def test_refusals():
    model, X = badly_scaled_layer(d_in=6, d_out=4, n=50)
    stats = collect_statistics(model, [X])
    for kwargs in ({"weighting": "diagonal", "statistics": stats}, {"weighting": "hessian"}, {"compensate": True},
                   {"compensate": True, "statistics": collect_statistics(model, [X], gram=False)},
                   {"weighting": "hessian", "statistics": {"0": Statistics(50, None, torch.ones(5), 1)}},
                   {"compensate": True, "statistics": stats, "damp": -0.1}):
        m = copy.deepcopy(model)
        with pytest.raises(RecipeError) as info:
            share(m, bits=3, **kwargs)
        assert "\n" not in str(info.value)
        assert shared_weight(m[0]) is None                 # refused before anything changed
    with pytest.raises(RecipeError, match="weighting"):
        share(copy.deepcopy(model), bits=3, weighting="diagonal", statistics=stats)
    with pytest.raises(RecipeError, match="importance"):
        share_layer(copy.deepcopy(model)[0], bits=3, importance=torch.ones(3, 3))


# --------------------------------------------------------------------------- registry and recipes
def test_registry_declares_and_applies_the_options():
    options = QUANTIZERS.entry("kmeans").options
    assert options["weighting"].choices == ("none", "hessian") and options["weighting"].default == "none"
    assert options["compensate"].kind is bool and options["compensate"].default is False
    model, X = badly_scaled_layer(d_in=12, d_out=6, n=400)
    batches = [X[i:i + 100] for i in range(0, 400, 100)]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    report = quantize(a, "kmeans", calibration=batches, bits=3, weighting="hessian", compensate=True)
    share(b, bits=3, weighting="hessian", statistics=collect_statistics(b, batches), compensate=True)
    assert torch.equal(a[0].weight, b[0].weight)
    assert report["settings"]["weighting"] == "hessian" and report["settings"]["compensate"] is True
    with pytest.raises(RecipeError, match="weighting"):
        quantize(copy.deepcopy(model), "kmeans", calibration=batches, bits=3, weighting="hessian2")
    with pytest.raises(RecipeError, match="compensate"):
        quantize(copy.deepcopy(model), "kmeans", calibration=batches, bits=3, compensate="yes")
    with pytest.raises(RecipeError, match="calibration"):
        quantize(copy.deepcopy(model), "kmeans", bits=3, weighting="hessian")


def test_recipe_validates_the_new_options():
    with pytest.raises(RecipeError, match="weighting"):
        validate({"model": "lenet5", "quantize": {"bits": 4, "weighting": "hessian2"}})
    with pytest.raises(RecipeError, match="compensate"):
        validate({"model": "lenet5", "quantize": {"bits": 4, "compensate": 1}})
