"""Tests of k-means weight sharing against scikit-learn, dense autograd and numpy."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from efficientdl.compress.pruning.prune import prune_once, weight_mask
from efficientdl.compress.quantization.share import kmeans_1d, share, share_layer, shared_weight
from efficientdl.errors import RecipeError


def weights_sample(n=3000, seed=0):
    """Bimodal, like the weights of a pruned layer."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-0.08, 0.03, n // 2)
    b = rng.normal(0.07, 0.04, n - n // 2)
    return np.concatenate([a, b]).astype(np.float32)


def objective(x, centroids):
    x = np.asarray(x, np.float64)[:, None]
    return float(np.min((x - np.asarray(centroids, np.float64)[None, :]) ** 2, axis=1).sum())


def nearest_distance(x, centroids):
    return np.min(np.abs(np.asarray(x, np.float64)[:, None] - np.asarray(centroids, np.float64)[None, :]), axis=1)


# --------------------------------------------------------------------------- k-means
@pytest.mark.parametrize("init,k", [("linear", 3), ("linear", 16), ("density", 8), ("density", 31)])
def test_kmeans_1d_agrees_with_sklearn(init, k):
    x = weights_sample(2000, seed=k)
    init_centroids, _ = kmeans_1d(x, k, init=init, max_iter=0)  # max_iter=0 returns the initialisation
    centroids, labels = kmeans_1d(x, k, init=init, max_iter=1000, tol=0.0)
    ref = KMeans(n_clusters=k, init=init_centroids.astype(np.float64).reshape(-1, 1), n_init=1,
                 algorithm="lloyd", max_iter=1000, tol=0.0).fit(x.astype(np.float64).reshape(-1, 1))
    span = float(x.max() - x.min())
    np.testing.assert_allclose(np.sort(centroids), np.sort(ref.cluster_centers_.ravel()), rtol=0, atol=1e-5 * span)
    assert objective(x, centroids) == pytest.approx(ref.inertia_, rel=1e-5)
    assert centroids.dtype == np.float32 and labels.dtype == np.int64
    assert np.all(np.diff(centroids) >= 0)


def test_linear_init_is_linspace_and_first_iteration_is_one_lloyd_step():
    x = weights_sample(500, seed=1)
    k = 8
    c0, _ = kmeans_1d(x, k, init="linear", max_iter=0)
    expected0 = np.linspace(x.min(), x.max(), k)
    np.testing.assert_allclose(c0, expected0.astype(np.float32), rtol=0, atol=1e-7)
    # one Lloyd step from linspace, computed densely
    labels0 = np.argmin(np.abs(x.astype(np.float64)[:, None] - expected0[None, :]), axis=1)
    expected1 = np.array([x[labels0 == j].astype(np.float64).mean() if np.any(labels0 == j) else expected0[j]
                          for j in range(k)])
    c1, _ = kmeans_1d(x, k, init="linear", max_iter=1)
    np.testing.assert_allclose(c1, np.sort(expected1), rtol=0, atol=1e-6)


def test_density_init_spreads_over_the_cdf():
    x = weights_sample(4000, seed=2)
    k = 8
    c0, _ = kmeans_1d(x, k, init="density", max_iter=0)
    cdf = np.array([(x <= c).mean() for c in c0])
    # evenly spaced over the CDF: consecutive centroids are 1/k of the data apart
    np.testing.assert_allclose(np.diff(cdf), 1.0 / k, atol=0.01)
    assert 0 < cdf[0] < 1.0 / k and 1 - 1.0 / k < cdf[-1] <= 1


def test_random_init_draws_data_points_and_is_seeded():
    x = weights_sample(1000, seed=3)
    k = 6
    a, _ = kmeans_1d(x, k, init="random", seed=11, max_iter=0)
    b, _ = kmeans_1d(x, k, init="random", seed=11, max_iter=0)
    c, _ = kmeans_1d(x, k, init="random", seed=12, max_iter=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.isin(a, x))  # Forgy: the initial centroids are weights
    assert np.all(np.diff(a) >= 0)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_labels_are_nearest_centroid(init):
    x = weights_sample(2000, seed=4)
    centroids, labels = kmeans_1d(x, 15, init=init, seed=1)
    assert labels.shape == x.shape and labels.min() >= 0 and labels.max() < 15
    d_label = np.abs(x.astype(np.float64) - centroids[labels].astype(np.float64))
    np.testing.assert_allclose(d_label, nearest_distance(x, centroids), rtol=0, atol=1e-7)
    # each centroid is (up to float32 rounding) the mean of its cluster
    for j in np.unique(labels):
        assert centroids[j] == pytest.approx(x[labels == j].astype(np.float64).mean(), abs=1e-6)


def test_kmeans_edge_cases():
    c, lab = kmeans_1d(np.array([0.5, 0.5, 0.5], np.float32), 3)
    assert np.all(c == 0.5) and lab.shape == (3,)
    c, lab = kmeans_1d(np.zeros(0, np.float32), 4)
    assert c.shape == (4,) and lab.shape == (0,)
    x = np.array([-1.0, 0.25, 2.0, 2.0], np.float32)
    c, lab = kmeans_1d(x, 3)
    np.testing.assert_array_equal(c, [-1.0, 0.25, 2.0])
    np.testing.assert_array_equal(lab, [0, 1, 2, 2])
    with pytest.raises(RecipeError):
        kmeans_1d(x, 2, init="kmeans++")


# --------------------------------------------------------------------------- shared layers
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def make_net(seed=0, sparsity=0.6):
    torch.manual_seed(seed)
    net = Net()
    if sparsity:
        prune_once(net, sparsity=sparsity)
    return net


def make_data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def dense_forward(x, weights, net):
    """The same network computed with plain tensors (no parametrizations)."""
    h = torch.relu(nn.functional.conv2d(x, weights["conv"], net.conv.bias.detach())).flatten(1)
    h = torch.relu(nn.functional.linear(h, weights["fc1"], net.fc1.bias.detach()))
    return nn.functional.linear(h, weights["fc2"], net.fc2.bias.detach())


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_centroid_gradient_is_per_cluster_sum_of_weight_gradient(bits):
    net = make_net(seed=bits)
    share(net, bits=bits)
    x, y = make_data()
    # dL/dW from a dense copy: the effective weights as plain leaf tensors
    plain = {n: getattr(net, n).weight.detach().clone().requires_grad_(True) for n in ("conv", "fc1", "fc2")}
    nn.functional.cross_entropy(dense_forward(x, plain, net), y).backward()
    # dL/dc through the parametrization
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    for name in ("conv", "fc1", "fc2"):
        sw = shared_weight(getattr(net, name))
        idx = sw.indices.numpy().ravel()
        grad_w = plain[name].grad.numpy().astype(np.float64).ravel()
        expected = np.bincount(idx, weights=grad_w, minlength=1 << bits)[1:]
        got = sw.centroids.grad.numpy().astype(np.float64)
        assert got.shape == ((1 << bits) - 1,)
        scale = np.abs(grad_w).sum() + 1e-12
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)
        assert np.abs(expected).max() > 0  # not vacuous
        # the stored weight is frozen: no gradient reaches it
        original = getattr(net, name).parametrizations.weight.original
        assert not original.requires_grad and original.grad is None


def test_effective_weight_is_codebook_of_indices_and_keeps_zeros():
    net = make_net(seed=9, sparsity=0.7)
    before = {n: getattr(net, n).weight.detach().clone() for n in ("conv", "fc1", "fc2")}
    share(net, bits=4)
    for name, w0 in before.items():
        module = getattr(net, name)
        sw = shared_weight(module)
        assert weight_mask(module) is None  # the mask was folded in
        codebook = np.concatenate([[0.0], sw.centroids.detach().numpy()]).astype(np.float32)
        w = module.weight.detach().numpy()
        np.testing.assert_array_equal(w, codebook[sw.indices.numpy()])
        # zeros stay zeros (index 0), survivors get a nonzero index
        np.testing.assert_array_equal(sw.indices.numpy() == 0, w0.numpy() == 0)
        values = np.unique(w[w != 0])
        assert 0 < values.size <= 2 ** 4 - 1
        # each survivor is mapped to its nearest centroid
        alive = w0.numpy()[w0.numpy() != 0]
        d = np.abs(alive - w[w0.numpy() != 0]).astype(np.float64)
        np.testing.assert_allclose(d, nearest_distance(alive, sw.centroids.detach().numpy()), atol=1e-7)


def test_few_distinct_values_are_kept_exactly():
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        w = torch.zeros(4, 6)
        w[0, 1], w[2, 3], w[3, 5], w[1, 0] = 0.5, -0.25, 0.5, 1.5
        layer.weight.copy_(w)
    sw = share_layer(layer, bits=3)  # 3 distinct values, 7 clusters
    assert torch.equal(layer.weight.detach(), w)
    assert sw.centroids.shape == (7,)


def test_finetuning_keeps_zeros_assignments_and_codebook_size():
    bits = 3
    net = make_net(seed=4, sparsity=0.75)
    zeros = {n: getattr(net, n).weight.detach() == 0 for n in ("conv", "fc1", "fc2")}
    share(net, bits={"Conv2d": 4, "Linear": bits})
    indices = {n: shared_weight(getattr(net, n)).indices.clone() for n in zeros}
    centroids0 = {n: shared_weight(getattr(net, n)).centroids.detach().clone() for n in zeros}
    x, y = make_data(64, seed=5)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for name, z in zeros.items():
        module = getattr(net, name)
        sw = shared_weight(module)
        w = module.weight.detach()
        assert torch.all(w[z] == 0)
        assert torch.equal(sw.indices, indices[name])
        b = 4 if name == "conv" else bits
        assert sw.bits == b
        assert torch.unique(w[w != 0]).numel() <= 2 ** b - 1
        assert not torch.equal(sw.centroids.detach(), centroids0[name])  # they did train
        # all weights of one cluster share the same (trained) value
        codebook = torch.cat([torch.zeros(1), sw.centroids.detach()])
        assert torch.equal(w, codebook[sw.indices])


def test_share_per_layer_bits_and_skipped_layers():
    net = make_net(seed=6, sparsity=0.5)
    w_conv = net.conv.weight.detach().clone()
    _, report = share(net, bits={"fc1": 2, "Linear": 3})
    assert report.settings["bits"] == {"fc1": 2, "fc2": 3}
    assert shared_weight(net.conv) is None
    assert torch.equal(net.conv.weight.detach(), w_conv)
    assert shared_weight(net.fc1).bits == 2 and shared_weight(net.fc1).centroids.numel() == 3
    with pytest.raises(RecipeError):
        share(make_net(), bits={"fc9": 4})
    with pytest.raises(RecipeError):
        share(make_net(), bits=0)
    with pytest.raises(RecipeError):
        share(make_net(), bits=2.5)


def test_share_unpruned_layer_and_mask_intersection():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    share_layer(layer, bits=5)
    assert int((layer.weight != 0).sum()) == layer.weight.numel()  # nothing was pruned
    assert torch.unique(layer.weight.detach()).numel() <= 31
    # a pruned layer: the shared weight is zero exactly where the mask is zero (index 0), and every
    # kept weight becomes its nearest centroid
    from efficientdl.compress.pruning.prune import apply_mask

    pruned = nn.Linear(40, 30)
    mask = torch.rand(30, 40, generator=torch.Generator().manual_seed(1)) < 0.5     # a mask built by hand
    assert 0 < int(mask.sum()) < mask.numel()
    latent = pruned.weight.detach().clone()
    apply_mask(pruned, mask)
    sw = share_layer(pruned, bits=5)
    shared = pruned.weight.detach()
    assert torch.equal(shared == 0, ~mask)
    assert torch.equal(sw.indices == 0, ~mask)
    assert weight_mask(pruned) is None                                   # the mask is folded into the indices
    kept, centroids = latent[mask].numpy(), sw.centroids.detach().numpy()
    np.testing.assert_allclose(np.abs(shared[mask].numpy() - kept), nearest_distance(kept, centroids),
                               rtol=0, atol=1e-7)


def test_sharing_a_copy_leaves_the_pruned_original_intact():
    """Deep copies share parametrize's generated class; folding one copy must not break the other."""
    import copy as _copy

    from efficientdl.compress.pruning.prune import apply_mask, magnitude_mask

    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    for layer in (original[0], original[2]):
        apply_mask(layer, magnitude_mask(layer.weight, 0.5))
    expected = original[0].weight.detach().clone()
    trial = _copy.deepcopy(original)
    share(trial, bits=2)
    assert torch.equal(original[0].weight, expected)
    assert len(torch.unique(trial[0].weight[trial[0].weight != 0])) <= 3


def test_kmeans_leaves_no_cluster_empty_on_outliers():
    """Issue 15 item 3: the linear start on a gate matrix with outliers (−61…41, std 1.4)
    left 22 of 64 clusters empty; reseeding from the worst-served values fills them all
    and matches scikit-learn (which relocates empty clusters too) from the same start."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.4, 4000)
    x[:3] = -61.0
    x[3:5] = 41.0
    x[5:8] = rng.uniform(-40, 30, 3)
    x = x.astype(np.float32)
    k = 64
    start, _ = kmeans_1d(x, k, init="linear", max_iter=0)
    centroids, labels = kmeans_1d(x, k, init="linear")
    assert np.all(np.bincount(labels, minlength=k) > 0)
    ref = KMeans(n_clusters=k, init=start.astype(np.float64).reshape(-1, 1), n_init=1,
                 algorithm="lloyd", max_iter=3000, tol=0.0).fit(x.astype(np.float64).reshape(-1, 1))
    assert objective(x, centroids) <= 1.05 * ref.inertia_
