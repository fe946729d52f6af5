"""The pipeline's post-training path (calibration samples, one-shot pruning, no retraining),
checked against the layers' outputs computed here."""

import copy

import pytest
import torch

from efficientdl import data, models
from efficientdl.compress import pipeline
from efficientdl.compress.pruning.prune import weight_mask
from efficientdl.compress.recipe import DEFAULT_CALIBRATION, calibration_samples, validate
from efficientdl.errors import RecipeError
from efficientdl.report.render import layer_table

SAMPLES = 96
BASE = {"model": "lenet300", "data": "digits", "seed": 0, "batch_size": 64, "dense": {"epochs": 2, "lr": 0.05}}


def run(recipe: dict, dense_state=None):
    torch.manual_seed(0)
    ds = data.load("digits", batch_size=recipe["batch_size"], seed=0)
    model = models.create("lenet300", num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    pretrained = dense_state is not None
    if pretrained:
        model.load_state_dict(dense_state)
    result = pipeline.run(model, ds.train, ds.test, validate(recipe), pretrained=pretrained, progress=False,
                          log=lambda *_: None)
    return ds, result


@pytest.fixture(scope="module")
def dense(one_thread_module):
    ds, result = run(BASE)
    return ds, result


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calibration_inputs(ds, samples):
    """The first ``samples`` inputs of the training loader's first epoch, taken here."""
    order = ds.train.permutation(0)[:samples]
    return ds.train.x[order]


def layer_inputs(model, x):
    """The input of every Linear layer on ``x``, by name (hooks written here)."""
    seen = {}

    def keep(name, inputs):
        seen[name] = inputs[0].reshape(-1, inputs[0].shape[-1])

    handles = [m.register_forward_hook(lambda m, i, o, n=n: keep(n, i))
               for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


def test_recipe_keys_validate_and_need_calibration():
    plain = validate({**BASE, "prune": {"sparsity": 0.5}})
    assert calibration_samples(plain) is None
    assert calibration_samples(validate({**BASE, "prune": {"sparsity": 0.5, "method": "obs"}})) == DEFAULT_CALIBRATION
    assert calibration_samples(validate({**BASE, "prune": {"pattern": "2:4", "calibration": 64}})) == 64
    assert calibration_samples(validate({**BASE, "bn": "reestimate"})) == DEFAULT_CALIBRATION
    for bad, match in [({"prune": {"quality": 1.0, "method": "obs"}}, "not 'quality'"),
                       ({"prune": {"sparsity": 0.5, "sequential": True}}, "post-training"),
                       ({"prune": {"sparsity": 0.5, "allocation": "error"}}, "post-training"),
                       ({"prune": {"sparsity": {"fc1": 0.5}, "method": "obs", "allocation": "error"}},
                        "network-wide"),
                       ({"prune": {"pattern": "2:4", "method": "obs", "allocation": "error"}}, "not with 'pattern'"),
                       ({"prune": {"sparsity": 0.5, "method": "obs", "allocation": "global"}}, "expected one of"),
                       ({"prune": {"pattern": "2-4"}}, "N:M"),
                       ({"prune": {"sparsity": 0.5, "method": "sparsegpt"}}, "expected one of"),
                       ({"prune": {"sparsity": 0.5, "calibration": 0}}, "≥ 1"),
                       ({"bn": "fold", "fold_batchnorm": True}, "not both"),
                       ({"bn": "refold"}, "expected one of")]:
        with pytest.raises(RecipeError, match=match):
            validate({**BASE, **bad})


def test_unknown_pattern_layer_is_refused_before_anything_runs():
    ds = data.load("digits", batch_size=64, seed=0)
    model = models.create("lenet300", num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    with pytest.raises(RecipeError, match="nolayer"):
        pipeline.run(model, ds.train, ds.test, validate({**BASE, "prune": {"pattern": {"nolayer": "2:4"}}}),
                     progress=False, log=lambda *_: None)


def test_recipe_error_allocation_reaches_the_network_wide_sparsity(dense):
    ds, base = dense
    recipe = {**BASE, "prune": {"sparsity": 0.6, "method": "obs", "allocation": "error", "calibration": SAMPLES}}
    _, result = run(recipe, copy.deepcopy(base.model.state_dict()))
    assert result.stages[1].settings["allocation"] == "error"
    weights = [m.weight for m in result.model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=2e-3)


@pytest.mark.parametrize("method", ["obs", "wanda", "magnitude"])
def test_one_shot_prune_without_retraining(dense, method):
    ds, base = dense
    state = base.model.state_dict()
    recipe = {**BASE, "prune": {"sparsity": 0.6, "method": method, "calibration": SAMPLES}}
    _, result = run(recipe, copy.deepcopy(state))
    prune = result.stages[1]
    assert prune.stage == "prune" and prune.history == []          # no retraining
    assert prune.settings["calibration_samples"] == SAMPLES
    dense_model = base.model
    x = calibration_inputs(ds, SAMPLES)
    inputs = layer_inputs(dense_model, x)
    for name, module in result.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        w = dict(dense_model.named_modules())[name].weight.detach().double()
        w_hat = module.weight.detach().double()
        assert float((w_hat == 0).double().mean()) == pytest.approx(0.6, abs=0.01)
        X = inputs[name].double()
        expected = float(torch.linalg.norm(X @ (w - w_hat).T) / torch.linalg.norm(X @ w.T))
        assert prune.settings["output_error"][f"{name}.weight"] == pytest.approx(expected, rel=1e-6)
    table = layer_table([s.to_dict() for s in result.stages])
    assert "output error % (P)" in table


def test_obs_output_error_is_below_magnitude_on_every_layer(dense):
    _, base = dense
    state = base.model.state_dict()
    errors = {}
    for method in ("obs", "magnitude"):
        _, result = run({**BASE, "prune": {"sparsity": 0.7, "method": method, "calibration": SAMPLES}},
                        copy.deepcopy(state))
        errors[method] = result.stages[1].settings["output_error"]
    assert all(errors["obs"][k] < errors["magnitude"][k] for k in errors["obs"])


def test_pattern_gives_n_of_m_and_calibration_leaves_dense_training_unchanged(dense):
    _, base = dense
    ds, result = run({**BASE, "prune": {"pattern": "2:4", "method": "obs", "calibration": SAMPLES}})
    # the calibration samples were taken without moving the loader: dense training is the same
    assert result.stages[0].accuracy_after == base.stages[0].accuracy_after
    for module in result.model.modules():
        if isinstance(module, torch.nn.Linear):
            kept = weight_mask(module, "weight").reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert bool((kept == 2).all())
            # OBS zeroes the weights of inputs that never fire (the padding pixels): at most 2 non-zeros
            assert bool(((module.weight.detach() != 0).reshape(kept.shape + (4,)).sum(-1) <= 2).all())


def test_hessian_sharing_bias_correction_and_bn_are_run_and_recorded(dense):
    ds, base = dense
    recipe = {**BASE, "bn": "reestimate",
              "prune": {"sparsity": 0.5, "method": "obs", "calibration": SAMPLES, "bias_correction": True},
              "quantize": {"bits": 4, "weighting": "hessian"}}
    _, result = run(recipe, copy.deepcopy(base.model.state_dict()))
    prune, quantize = result.stages[1], result.stages[2]
    corrected = prune.settings["bias_correction"]["corrected"]
    assert set(corrected) == {"fc1", "fc2", "fc3"}
    assert all(c["error_after"] < c["error_before"] for c in corrected.values())
    assert prune.settings["bn_reestimated"]["layers"] == []          # LeNet-300-100 has no BatchNorm
    assert quantize.settings["weighting"] == "hessian"
    assert set(quantize.settings["output_error"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    # sharing adds error on top of pruning's, layer by layer
    assert all(quantize.settings["output_error"][k] >= prune.settings["output_error"][k] - 1e-9
               for k in quantize.settings["output_error"])
    assert result.bit_exact
