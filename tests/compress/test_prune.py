"""Tests of magnitude pruning against numpy computations and hand-worked schedules."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from efficientdl.compress.pruning.prune import (
    magnitude_mask,
    prune,
    prune_once,
    sensitivity,
    sparsities_from_sensitivity,
    sparsity_schedule,
    std_mask,
    weight_mask,
)
from efficientdl.errors import RecipeError


class Small(nn.Module):
    """conv (Conv2d) -> fc1 (Linear) -> fc2 (Linear) on 1 x 6 x 6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(3 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def make_model(seed=0):
    torch.manual_seed(seed)
    return Small()


def make_data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.9, 0.97, 1.0])
def test_magnitude_mask_keeps_exactly_the_largest(sparsity):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((17, 23)).astype(np.float32)
    mask = magnitude_mask(torch.from_numpy(w), sparsity).numpy()
    n = w.size
    keep = int(round((1 - sparsity) * n))
    expected = np.zeros(n, bool)
    expected[np.argsort(-np.abs(w).ravel(), kind="stable")[:keep]] = True
    assert mask.shape == w.shape and mask.dtype == np.bool_
    assert mask.sum() == keep
    np.testing.assert_array_equal(mask.ravel(), expected)


def test_magnitude_mask_with_ties_keeps_exact_count():
    w = torch.tensor([1.0, -1.0, 1.0, 0.5, -1.0, 2.0, 0.0, 1.0])
    mask = magnitude_mask(w, 0.5)  # keep 4 of 8; |w| sorted: 2, 1, 1, 1, 1, 0.5, 0
    assert int(mask.sum()) == 4
    assert bool(mask[5])  # the 2.0
    kept = w.abs()[mask]
    dropped = w.abs()[~mask]
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("quality", [0.0, 0.5, 1.0, 1.7])
def test_std_mask_matches_numpy(quality):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((30, 20)).astype(np.float32)
    w[rng.random(w.shape) < 0.4] = 0.0  # already-pruned weights: excluded from the std
    mask = std_mask(torch.from_numpy(w), quality).numpy()
    alive = w[w != 0].astype(np.float64)
    # torch.std (the library's) is the sample standard deviation (ddof=1).
    threshold = quality * np.std(alive, ddof=1)
    expected = np.abs(w) > threshold
    # Guard against values within float32 rounding of the threshold.
    close = np.isclose(np.abs(w), threshold, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(mask[~close], expected[~close])
    assert not mask[w == 0].any()


# --------------------------------------------------------------------------- prune with retraining
def _sgd_retrain(x, y, records):
    """A retrain callback: a fresh SGD optimizer (momentum + weight decay), a few real steps."""

    def retrain(model, step):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        records.append(step)
        return [{"loss": float(loss.detach())}]

    return retrain


def _check_pruned(module):
    mask = weight_mask(module)
    assert mask is not None
    original = module.parametrizations.weight.original
    assert torch.all(module.weight.detach()[~mask] == 0)
    assert torch.all(original.detach()[~mask] == 0)
    if original.grad is not None:
        assert torch.all(original.grad[~mask] == 0)
    return mask


def test_prune_keeps_pruned_weights_zero_through_sgd():
    model = make_model()
    x, y = make_data()
    initial = {n: m.weight.detach().clone() for n, m in [("conv", model.conv), ("fc1", model.fc1), ("fc2", model.fc2)]}
    steps_seen = []
    model, report = prune(model, sparsity=0.8, steps=3, schedule="linear", retrain=_sgd_retrain(x, y, steps_seen))
    assert steps_seen == [1, 2, 3]
    assert [r["step"] for r in report.history] == [1, 2, 3]

    # One more forward/backward: the gradient reaching the stored weight is masked.
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for name, module in [("conv", model.conv), ("fc1", model.fc1), ("fc2", model.fc2)]:
        mask = _check_pruned(module)
        n = mask.numel()
        assert int(mask.sum()) == int(round(0.2 * n))
        assert module.parametrizations.weight.original.grad is not None
        # The surviving weights did train (the test is not vacuous).
        assert not torch.equal(module.weight.detach()[mask], initial[name][mask])
        assert report.settings["sparsity"][name] == pytest.approx(1 - int(round(0.2 * n)) / n)


def test_prune_mask_checked_inside_each_retrain_round():
    model = make_model(1)
    x, y = make_data()
    inner = _sgd_retrain(x, y, [])
    counts = []

    def retrain(m, step):
        out = inner(m, step)
        for module in (m.conv, m.fc1, m.fc2):
            _check_pruned(module)
        counts.append(int(weight_mask(m.fc1).sum()))
        return out

    prune(model, sparsity=0.9, steps=2, schedule="gradual", retrain=retrain)
    n = model.fc1.weight.numel()
    # gradual, 2 steps: 0.9 * (1 - 0.5^3) = 0.7875, then 0.9
    assert counts == [int(round((1 - 0.7875) * n)), int(round(0.1 * n))]


def test_prune_by_quality_uses_std_rule():
    model = make_model(2)
    w = model.fc1.weight.detach().numpy().copy()
    prune(model, quality=1.0)
    expected = np.abs(w) > np.std(w[w != 0].astype(np.float64), ddof=1)
    np.testing.assert_array_equal(weight_mask(model.fc1).numpy(), expected)


# --------------------------------------------------------------------------- schedules and specs
def test_sparsity_schedule_by_hand():
    gradual = sparsity_schedule(0.9, 3, "gradual")
    # s_i = s (1 - (1 - i/N)^3): 0.9*(1-8/27), 0.9*(1-1/27), 0.9
    assert gradual == pytest.approx([0.9 * 19 / 27, 0.9 * 26 / 27, 0.9])
    assert sparsity_schedule(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])
    assert sparsity_schedule(0.5, 1, "gradual") == pytest.approx([0.5])
    mapped = sparsity_schedule({"fc1": 0.8, "Conv2d": 0.4}, 2, "gradual")
    assert mapped[0] == pytest.approx({"fc1": 0.7, "Conv2d": 0.35})
    assert mapped[1] == pytest.approx({"fc1": 0.8, "Conv2d": 0.4})
    with pytest.raises(RecipeError):
        sparsity_schedule(0.5, 0)
    with pytest.raises(RecipeError):
        sparsity_schedule(0.5, 2, "cubic")


def _density(module):
    return float((module.weight != 0).sum()) / module.weight.numel()


def test_per_layer_spec_by_name_type_default():
    model = make_model(3)
    result = prune_once(model, sparsity={"fc1": 0.5, "Linear": 0.25, "default": 0.75})
    for name, module, s in [("fc1", model.fc1, 0.5), ("fc2", model.fc2, 0.25), ("conv", model.conv, 0.75)]:
        n = module.weight.numel()
        assert int((module.weight != 0).sum()) == int(round((1 - s) * n)), name
        assert result[name] == pytest.approx(1 - _density(module))


def test_per_layer_spec_without_default_skips_layers():
    model = make_model(4)
    result = prune_once(model, sparsity={"Conv2d": 0.5})
    assert set(result) == {"conv"}
    assert weight_mask(model.fc1) is None and weight_mask(model.fc2) is None
    assert _density(model.conv) == pytest.approx(int(round(0.5 * 27)) / 27)


@pytest.mark.parametrize("kwargs", [
    {"sparsity": {"fc9": 0.5}},
    {"sparsity": {"BatchNorm2d": 0.5}},
    {"quality": {"nope": 1.0}},
    {"sparsity": 1.5},
    {"sparsity": -0.1},
    {"sparsity": {"fc1": "lots"}},
    {"quality": -1.0},
    {},
    {"sparsity": 0.5, "quality": 1.0},
])
def test_bad_specs_raise_recipe_error(kwargs):
    model = make_model(5)
    with pytest.raises(RecipeError):
        prune_once(model, **kwargs)


def test_unknown_layer_key_message_names_it():
    with pytest.raises(RecipeError, match="fc9"):
        prune(make_model(), sparsity={"fc9": 0.5})


# --------------------------------------------------------------------------- sensitivity
def test_sensitivity_matches_manual_pruning_of_a_copy():
    model = make_model(6)
    x, y = make_data(128, seed=7)

    def accuracy(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    def score(m):  # continuous, so a wrong mask cannot pass by accident
        with torch.no_grad():
            return float(m(x).square().mean())

    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsities = [0.0, 0.5, 0.9]
    for evaluate in (accuracy, score):
        curves = sensitivity(model, evaluate, sparsities=sparsities)
        assert list(curves) == ["conv", "fc1", "fc2"]
        for name, curve in curves.items():
            assert [s for s, _ in curve] == sparsities
            for s, got in curve:
                manual = copy.deepcopy(model)
                w = manual.get_submodule(name).weight
                keep = int(round((1 - s) * w.numel()))
                order = np.argsort(-np.abs(w.detach().numpy().ravel()), kind="stable")
                with torch.no_grad():
                    w.view(-1)[torch.from_numpy(order[keep:].copy())] = 0.0
                assert got == pytest.approx(evaluate(manual), rel=1e-6, abs=1e-9), (name, s)
    # the model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert weight_mask(model.fc1) is None


def test_sensitivity_layer_subset_and_unknown_layer():
    model = make_model(7)
    curves = sensitivity(model, lambda m: 1.0, sparsities=[0.0, 0.5], layers=["fc2"])
    assert curves == {"fc2": [(0.0, 1.0), (0.5, 1.0)]}
    with pytest.raises(RecipeError):
        sensitivity(model, lambda m: 1.0, layers=["fc7"])


def test_sparsities_from_sensitivity_hand_made_curve():
    curves = {
        "robust": [(0.0, 0.90), (0.5, 0.899), (0.8, 0.895), (0.9, 0.85), (0.95, 0.5)],
        "fragile": [(0.0, 0.90), (0.3, 0.80), (0.5, 0.6)],
        "flat": [(0.0, 0.5), (0.9, 0.5), (0.98, 0.499)],
    }
    assert sparsities_from_sensitivity(curves, 0.01) == {"robust": 0.8, "fragile": 0.0, "flat": 0.98}
    assert sparsities_from_sensitivity(curves, 0.06) == {"robust": 0.9, "fragile": 0.0, "flat": 0.98}
    assert sparsities_from_sensitivity(curves, 0.2) == {"robust": 0.9, "fragile": 0.3, "flat": 0.98}
