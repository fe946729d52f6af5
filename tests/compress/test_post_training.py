"""Post-training pruning from calibration data (issue 15): statistics, OBS/SparseGPT, Wanda.

Each result is checked against an independent computation: numpy's inverse and least
squares for the OBS update, explicit patch loops for the im2col Gram matrix, the output
error measured on the samples themselves for the OBS ≤ Wanda ≤ magnitude ordering.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.compress.calibration import collect_statistics
from efficientdl.compress.pruning import (CRITERIA, SELECTIONS, PruningContext, obs_prune, prune_once,
                                          prune_post_training, weight_mask)
from efficientdl.errors import RecipeError


# --------------------------------------------------------------------------- OBS by hand
def _case(w0):
    A = np.array([[1.0, 0.5, 0.2], [0.3, 1.2, -0.4], [-0.6, 0.1, 0.9]])
    H = A @ A.T + 0.1 * np.eye(3)
    return np.array([w0], np.float64), H


def _err(delta, H):
    return float(np.sum((delta @ H) * delta))


def test_obs_single_weight_increase_is_w2_over_hinv_jj():
    """Remove the first weight: the error increase is OBS's w_j²/[H⁻¹]_jj, the update δ = −w_j/[H⁻¹]_jj · H⁻¹_:j."""
    W, H = _case([0.05, 1.0, -0.8])
    Hinv = np.linalg.inv(H)
    U = np.linalg.cholesky(Hinv).T                      # upper: H⁻¹ = Uᵀ U
    assert np.argmin(W[0] ** 2 / np.diag(U) ** 2) == 0   # the column SparseGPT's criterion removes
    j = 0
    expected_increase = W[0, j] ** 2 / Hinv[j, j]
    expected_w = W[0] - W[0, j] / Hinv[j, j] * Hinv[:, j]
    # the same optimum by least squares over the two remaining weights (independent of the formula)
    keep = [1, 2]
    best = W[0, keep] + np.linalg.solve(H[np.ix_(keep, keep)], H[keep, j] * W[0, j])
    assert _err(np.concatenate([[W[0, j]], W[0, keep] - best])[None], H) == pytest.approx(expected_increase)

    new, mask = obs_prune(torch.tensor(W), torch.tensor(H), sparsity=1 / 3, damp=0.0)
    new = new.numpy()
    assert mask.tolist() == [[False, True, True]]
    np.testing.assert_allclose(new[0], expected_w, atol=1e-12)
    assert _err(W - new, H) == pytest.approx(expected_increase, rel=1e-10)


def test_obs_later_column_is_optimal_with_earlier_columns_fixed():
    """SparseGPT compensates column j only with the columns right of it: increase = w_j²/U_jj²."""
    W, H = _case([1.0, 0.05, -0.8])
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    j = int(np.argmin(W[0] ** 2 / np.diag(U) ** 2))
    assert j == 1
    right = [2]
    best = W[0, right] + np.linalg.solve(H[np.ix_(right, right)], H[right, j] * W[0, j])
    expected = W[0].copy()
    expected[j], expected[right] = 0.0, best
    new, mask = obs_prune(torch.tensor(W), torch.tensor(H), sparsity=1 / 3, damp=0.0)
    np.testing.assert_allclose(new.numpy()[0], expected, atol=1e-12)
    assert _err(W - new.numpy(), H) == pytest.approx(W[0, j] ** 2 / U[j, j] ** 2, rel=1e-10)


def test_obs_dead_input_and_exact_count():
    torch.manual_seed(0)
    X = torch.randn(200, 10, dtype=torch.float64)
    X[:, 3] = 0.0                                        # an input that never fires
    W = torch.randn(6, 10, dtype=torch.float64)
    new, mask = obs_prune(W, X.T @ X, sparsity=0.5, block=4)
    assert int((~mask).sum()) == 30
    assert torch.all(new[:, 3] == 0) and torch.all(new[~mask] == 0)


# --------------------------------------------------------------------------- OBS ≤ Wanda ≤ magnitude
def _correlated(seed, n=512, d=64, r=24):
    """X = Z·A (+ a little noise): r latent factors mixed into d inputs of unequal scale."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, r, generator=g)
    A = torch.randn(r, d, generator=g) * torch.exp(0.5 * torch.randn(1, d, generator=g))  # random mixing
    return Z @ A / r ** 0.5 + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_obs_le_wanda_le_magnitude(seed):
    X = _correlated(seed)
    torch.manual_seed(seed)
    layer = nn.Linear(64, 32)
    batches = list(X.split(128))
    errors = {}
    for method in ("obs", "wanda", "magnitude"):
        pruned, report = prune_post_training(copy.deepcopy(layer), batches, sparsity=0.5, method=method)
        W, W_hat = layer.weight.detach().double(), pruned.weight.detach().double()
        errors[method] = float(torch.linalg.norm(X.double() @ (W - W_hat).T) / torch.linalg.norm(X.double() @ W.T))
        assert report.settings["reconstruction_error"]["weight"] == pytest.approx(errors[method], rel=1e-6)
        assert report.settings["sparsity"]["weight"] == pytest.approx(0.5)
    assert errors["obs"] <= errors["wanda"] <= errors["magnitude"]


# --------------------------------------------------------------------------- N:M
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("method", ["obs", "wanda"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_pattern_exact(method, pattern):
    n, m = map(int, pattern.split(":"))
    torch.manual_seed(0)
    net = ConvNet()
    data = [torch.randn(16, 8, 4, 4) for _ in range(2)]
    prune_post_training(net, data, pattern=pattern, method=method)
    for layer in (net.conv, net.fc):
        groups = layer.weight.detach().reshape(layer.weight.shape[0], -1).reshape(-1, m)
        assert torch.all((groups != 0).sum(dim=1) == n)
        assert weight_mask(layer) is not None


def test_pattern_that_does_not_fit_a_row_is_a_recipe_error():
    with pytest.raises(RecipeError, match="'weight'.*groups of 8"):
        prune_post_training(nn.Linear(12, 4), [torch.randn(5, 12)], pattern="4:8", method="obs")


# --------------------------------------------------------------------------- Gram matrices
def _patches_by_hand(x, k, stride, pads):
    """Patches (C, kh, kw) flattened, one per output position, by explicit slicing (no unfold)."""
    left, right, top, bottom = pads
    xp = F.pad(x, (left, right, top, bottom))
    rows = []
    for b in range(xp.shape[0]):
        for i in range(0, xp.shape[2] - k + 1, stride):
            for j in range(0, xp.shape[3] - k + 1, stride):
                rows.append(xp[b, :, i:i + k, j:j + k].reshape(-1))
    return torch.stack(rows).double()


def test_conv_gram_equals_patches_by_hand_and_matches_the_weight_order():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 5, 5)
    stats = collect_statistics(conv, [x])["weight"]
    P = _patches_by_hand(x, 3, 2, (1, 1, 1, 1))
    torch.testing.assert_close(stats.gram, P.T @ P)
    torch.testing.assert_close(stats.sq_norms, (P * P).sum(0))
    assert stats.count == P.shape[0] == 2 * 3 * 3
    # the column order is the weight's: W.reshape(C_out, −1) @ patch = the convolution's output
    out = conv(x).detach().permute(0, 2, 3, 1).reshape(-1, 4).double()
    torch.testing.assert_close(P @ conv.weight.detach().reshape(4, -1).double().T + conv.bias.double(), out,
                               rtol=1e-5, atol=1e-5)


def test_linear_gram_is_xtx_over_every_leading_position():
    x = torch.randn(2, 5, 6)                            # (batch, sequence, features)
    stats = collect_statistics(nn.Linear(6, 3), [(x, torch.zeros(2))])["weight"]  # labels ignored
    X = x.reshape(-1, 6).double()
    torch.testing.assert_close(stats.gram, X.T @ X)
    assert stats.count == 10


def test_depthwise_conv_gets_one_gram_per_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, groups=3)
    x = torch.randn(2, 3, 4, 4)
    stats = collect_statistics(conv, [x])["weight"]
    assert stats.gram.shape == (3, 9, 9)
    for g in range(3):
        P = _patches_by_hand(x[:, g:g + 1], 3, 1, (0, 0, 0, 0))
        torch.testing.assert_close(stats.gram[g], P.T @ P)
    assert stats.row_norms(6).shape == (6, 9)


# --------------------------------------------------------------------------- errors and coverage
class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


def test_layer_that_never_runs_is_a_one_line_error():
    with pytest.raises(RecipeError, match=r"^calibration: layer 'unused' never ran on the calibration data$"):
        collect_statistics(Unused(), [torch.randn(3, 4)])
    with pytest.raises(RecipeError, match="never ran"):
        prune_post_training(Unused(), [torch.randn(3, 4)], sparsity=0.5)
    with pytest.raises(RecipeError, match="no batches"):
        collect_statistics(Unused(), [])


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        x = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(x)
        h, _ = self.attn(h, h, h)
        return self.fc(h)


def test_recurrent_and_attention_tensors_are_covered_embeddings_and_conv1d_skipped_and_listed():
    model = WithLSTM()
    data = [torch.randint(0, 10, (2, 5))]
    covered = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "attn.in_proj_weight", "attn.out_proj", "fc"]
    assert list(collect_statistics(model, data)) == covered          # execution order
    for key in ("embed", "conv"):
        with pytest.raises(RecipeError, match=f"'{key}' .* not covered"):
            collect_statistics(model, data, keys=[key])
    _, report = prune_post_training(model, data, sparsity=0.5, method="obs")
    assert set(report.settings["sparsity"]) == set(covered)
    assert set(report.settings["not_covered"]) == {"embed", "conv"}
    assert weight_mask(model.embed) is None and weight_mask(model.conv) is None
    assert weight_mask(model.lstm, "weight_hh_l0") is not None and weight_mask(model.attn, "in_proj_weight") is not None


# --------------------------------------------------------------------------- real-world shapes
class Conv2dSame(nn.Conv2d):
    """TF-style "same" padding computed in forward (as timm's Conv2dSame)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding="same")

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class RealNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.block = Residual(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def test_conv_subclass_that_pads_itself_gets_the_padded_patches():
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(2, 2, 6, 6)                         # TF same: total pad 1, (0 top/left, 1 bottom/right)
    stats = collect_statistics(conv, [x])["weight"]
    P = _patches_by_hand(x, 3, 2, (0, 1, 0, 1))
    torch.testing.assert_close(stats.gram, P.T @ P)


@pytest.mark.parametrize("sequential", [False, True])
def test_conv_subclass_and_residual_block_are_calibrated_and_pruned(sequential):
    torch.manual_seed(0)
    net = RealNet()
    data = [(torch.randn(8, 3, 12, 12), torch.zeros(8)) for _ in range(3)]
    stats = collect_statistics(net, data)
    assert list(stats) == ["stem", "block.conv1", "block.conv2", "head"]   # execution order
    before = {k: s.count for k, s in stats.items()}
    assert before["stem"] == 3 * 8 * 6 * 6
    reports = {}
    for method in ("obs", "magnitude"):
        model = copy.deepcopy(net)
        _, reports[method] = prune_post_training(model, data, sparsity=0.5, method=method, sequential=sequential)
        for key in before:
            layer = model.get_submodule(key)
            assert weight_mask(layer) is not None
            assert reports[method].settings["sparsity"][key] == pytest.approx(0.5, abs=0.01)
        assert model(data[0][0]).shape == (8, 5)
    for key in before:
        assert reports["obs"].settings["reconstruction_error"][key] <= \
            reports["magnitude"].settings["reconstruction_error"][key] + 1e-9
    with pytest.raises(RecipeError, match="one-pass"):
        prune_post_training(copy.deepcopy(net), iter(data), sparsity=0.5, sequential=True)


# --------------------------------------------------------------------------- the registry entries
def test_wanda_and_obs_criteria_in_the_registry():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    X = torch.randn(50, 8) * torch.arange(1, 9)
    stats = collect_statistics(layer, [X])
    W = layer.weight.detach()
    norms = torch.linalg.norm(X.double(), dim=0)
    scores = CRITERIA.get("wanda")(W, PruningContext(None, stats["weight"]))
    torch.testing.assert_close(scores, W.abs() * norms.float())
    mask = SELECTIONS.get("per_row")(scores, 0.5)
    assert torch.all(mask.sum(1) == 4)
    assert torch.equal(mask, scores >= scores.sort(dim=1, descending=True).values[:, 3:4])
    H = (X.double().T @ X.double()).numpy()
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(8)
    expected = W.double().numpy() ** 2 / np.diag(np.linalg.inv(Hd))[None]
    np.testing.assert_allclose(CRITERIA.get("obs")(W, PruningContext(None, stats["weight"])).numpy(), expected,
                               rtol=1e-5)
    prune_once(layer, sparsity=0.5, criterion="wanda", statistics=stats)
    assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5)
    with pytest.raises(RecipeError, match="needs calibration statistics"):
        prune_once(nn.Linear(4, 4), sparsity=0.5, criterion="wanda")


def test_given_statistics_give_the_same_result_as_collecting_them():
    from efficientdl.compress.calibration import collect_statistics
    from efficientdl.compress.pruning.post_training import prune_post_training

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(32, 12) @ torch.randn(12, 12) for _ in range(3)]
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    prune_post_training(a, batches, sparsity=0.5, method="obs")
    stats = collect_statistics(b, batches)
    prune_post_training(b, batches, sparsity=0.5, method="obs", statistics=stats)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert stats["0"].gram is not None                     # the caller's statistics are kept
    with pytest.raises(RecipeError, match="sequential"):
        prune_post_training(copy.deepcopy(net), batches, sparsity=0.5, sequential=True, statistics=stats)


# --------------------------------------------------------------------------- sparsity allocation
def test_allocation_solver_equals_the_linear_programme_on_convex_curves():
    """On convex error curves (linear between grid points) the greedy solver reaches the optimum
    that scipy's LP solver finds for the same problem: per layer and grid segment, weights
    pruned ``x ∈ [0, Δs·n]`` at the segment's slope, ``Σ x`` = the weights to remove."""
    from scipy.optimize import linprog

    from efficientdl.compress.pruning.post_training import allocate_sparsity

    grid = [0.0, 0.2, 0.4, 0.6, 0.8]
    rng = np.random.default_rng(0)
    sizes = {"a": 100, "b": 300, "c": 200, "d": 50}
    coefficients = {k: (float(rng.uniform(0.2, 3.0)), float(rng.uniform(0, 0.5))) for k in sizes}
    curves = {k: {s: a * s ** 2 + b * s for s in grid} for k, (a, b) in coefficients.items()}

    def cost(alloc):                              # the curves, linear between grid points
        return sum(float(np.interp(alloc[k], grid, [curves[k][s] for s in grid])) for k in sizes)

    total = sum(sizes.values())
    slopes, bounds = [], []
    for k in sizes:
        for s0, s1 in zip(grid, grid[1:]):
            slopes.append((curves[k][s1] - curves[k][s0]) / ((s1 - s0) * sizes[k]))
            bounds.append((0, (s1 - s0) * sizes[k]))
    for target in (0.3, 0.5, 0.7):
        lp = linprog(slopes, A_eq=[np.ones(len(slopes))], b_eq=[target * total], bounds=bounds)
        result = allocate_sparsity(curves, sizes, target)
        assert sum(result[k] * sizes[k] for k in sizes) == pytest.approx(target * total)
        assert cost(result) == pytest.approx(lp.fun + sum(curves[k][0.0] for k in sizes), rel=1e-9)


def test_allocation_cuts_the_last_step_to_the_target():
    from efficientdl.compress.pruning.post_training import allocate_sparsity

    curves = {"big": {0.0: 0.0, 0.5: 0.1, 1.0: 5.0}, "small": {0.0: 0.0, 0.5: 1.0, 1.0: 9.0}}
    result = allocate_sparsity(curves, {"big": 900, "small": 100}, 0.3)
    assert result == pytest.approx({"big": 1 / 3, "small": 0.0})     # 300 weights, all from the cheap layer


def test_error_allocation_prunes_the_redundant_layer_more_and_meets_the_total():
    """Two layers, one on inputs of rank 4 (most of its weights removable at no error), one on
    full-rank inputs: the error allocation gives the first more sparsity, removes 60% of all
    their weights, and leaves a smaller summed output error than 60% in both."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.low = nn.Linear(32, 16)
            self.full = nn.Linear(32, 16)

        def forward(self, x):
            return self.low(x[:, :32]) + self.full(x[:, 32:])

    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(512, 4, generator=g) @ torch.randn(4, 32, generator=g)
    x = torch.cat([low_rank, torch.randn(512, 32, generator=g)], 1)
    torch.manual_seed(0)
    model = Two()
    batches = list(x.split(128))
    errors = {}
    for allocation in ("uniform", "error"):
        pruned, report = prune_post_training(copy.deepcopy(model), batches, sparsity=0.6, method="obs",
                                             allocation=allocation)
        s = report.settings["sparsity"]
        assert (s["low"] + s["full"]) / 2 == pytest.approx(0.6, abs=1e-3)
        assert report.settings["allocation"] == allocation
        errors[allocation] = sum(report.settings["reconstruction_error"][k] ** 2 for k in s)
        if allocation == "error":
            assert s["low"] > 0.6 > s["full"]
    assert errors["error"] < errors["uniform"]


@pytest.mark.parametrize("kwargs, message", [
    ({"allocation": "global"}, "allocation must be one of uniform, error"),
    ({"allocation": "error", "pattern": "2:4", "sparsity": None}, "not with 'pattern' or 'sequential'"),
    ({"allocation": "error", "sparsity": {"0": 0.5, "2": 0.7}}, "spreads one sparsity"),
])
def test_bad_allocation_settings_are_recipe_errors(kwargs, message):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    settings = {"sparsity": 0.5, "method": "obs", **kwargs}
    with pytest.raises(RecipeError, match=message):
        prune_post_training(model, [torch.randn(16, 8)], **settings)
