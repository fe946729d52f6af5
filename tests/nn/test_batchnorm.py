"""Evaluation-mode BatchNorm as a precomputed affine: against the normalisation formula in float64,
on modules written in several styles, and every case that must run the module's own forward."""

import copy

import pytest
import torch
from torch import nn

from efficientdl.nn import batchnorm, chain, settle

from test_weights import compress


def random_bn(channels, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, affine=affine, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=g))
            bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


def formula(bn, x):
    """(x − μ) / √(σ² + ε) · γ + β in float64, from the module's state."""
    view = (1, -1, 1, 1)
    y = (x.double() - bn.running_mean.double().view(view)) / torch.sqrt(bn.running_var.double().view(view) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.double().view(view) + bn.bias.double().view(view)
    return y


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (4, 5, 1, 1), (2, 5, 9, 9)])
def test_affine_equals_the_formula(affine, shape):
    bn = random_bn(shape[1], affine)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    f = batchnorm.AffineForward(bn, "bn")
    with torch.no_grad():
        y = f(x)
    assert f.affine_calls == 1 and f.module_calls == 0
    torch.testing.assert_close(y.double(), formula(bn, x), rtol=1e-5, atol=1e-5)


class Block(nn.Module):
    """torchvision style: BatchNorm outside nn.Sequential, called from the forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = random_bn(6, seed=2)
        self.seq = nn.Sequential(nn.Conv2d(6, 6, 1), random_bn(6, affine=False, seed=3), nn.ReLU())
        self.no_stats = nn.BatchNorm2d(6, track_running_stats=False)
        self.flat = nn.BatchNorm1d(6)

    def forward(self, x):
        y = self.seq(torch.relu(self.bn(self.conv(x))))
        y = self.no_stats(y)
        return self.flat(y.mean((2, 3)))


class MyNorm(nn.BatchNorm2d):
    """A user's subclass with its own forward: not ours to replace."""

    def forward(self, x):
        return super().forward(x) * 2


def test_install_takes_exactly_the_foldable_modules_and_uninstall_restores():
    model = Block().eval()
    model.extra = MyNorm(6).eval()
    reference = copy.deepcopy(model)
    names = batchnorm.install(model)
    assert names == ["bn", "seq.1"]                   # not track_running_stats=False, BatchNorm1d, a subclass
    assert isinstance(model.bn.__dict__["forward"], batchnorm.AffineForward)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert model.bn.forward.affine_calls == 1
    assert model.state_dict().keys() == reference.state_dict().keys()
    batchnorm.uninstall(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_changed_statistics_parameters_and_eps_are_followed():
    bn = random_bn(4)
    model = nn.Sequential(bn).eval()
    batchnorm.install(model)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model(x)
        bn.running_mean.add_(1.5)                     # in place: the version counter moves
        torch.testing.assert_close(model(x).double(), formula(bn, x), rtol=1e-5, atol=1e-5)
        bn.running_var = torch.full((4,), 3.0)        # a new tensor
        torch.testing.assert_close(model(x).double(), formula(bn, x), rtol=1e-5, atol=1e-5)
        bn.weight.mul_(-2)
        bn.eps = 0.5
        torch.testing.assert_close(model(x).double(), formula(bn, x), rtol=1e-5, atol=1e-5)
        bn.running_mean = bn.running_var = None       # no statistics left: the module's own forward
        bn.track_running_stats = False
        torch.testing.assert_close(model(x), nn.BatchNorm2d.forward(bn, x))
    assert bn.forward.module_calls == 1


def test_training_gradients_and_bad_shapes_run_the_module():
    bn = random_bn(3)
    twin = copy.deepcopy(bn)
    batchnorm.install(bn)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(6))
    bn.train()
    twin.train()
    torch.testing.assert_close(bn(x), twin(x))         # batch statistics, and the running ones updated
    torch.testing.assert_close(bn.running_mean, twin.running_mean)
    bn.eval()
    twin.eval()
    xg = x.clone().requires_grad_()
    bn(xg).sum().backward()                            # a gradient wanted: through the module, to γ and β
    assert bn.weight.grad is not None and xg.grad is not None
    with torch.no_grad():
        with pytest.raises(ValueError, match="4D"):   # not an image batch: the module's own error
            bn(torch.randn(3, 5, 5))
        with pytest.raises(RuntimeError):              # a wrong channel count: the module's own error
            bn(torch.randn(1, 4, 2, 2))
    assert bn.forward.affine_calls == 0 and bn.forward.module_calls == 4


def test_hooks_still_run_around_the_affine():
    bn = random_bn(3)
    model = nn.Sequential(nn.Identity(), bn).eval()
    batchnorm.install(model)
    seen = []
    bn.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    bn.register_forward_hook(lambda m, args, out: out + 100)
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        y = model(x)
    assert seen == ["pre"] and bn.forward.affine_calls == 1
    torch.testing.assert_close(y.double(), formula(bn, x) + 100, rtol=1e-5, atol=1e-4)


def test_a_copy_computes_from_its_own_module():
    model = nn.Sequential(random_bn(3)).eval()
    batchnorm.install(model)
    twin = copy.deepcopy(model)
    assert twin[0].forward.bn is twin[0]
    with torch.no_grad():
        twin[0].running_mean.add_(10)
        x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(model(x).double(), formula(model[0], x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(twin(x).double(), formula(twin[0], x), rtol=1e-5, atol=1e-5)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = random_bn(8, seed=9)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.bn2 = random_bn(16, seed=10)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_the_runtime_installs_affines_with_its_chains_and_settle_keeps_them_only_compressed():
    model, reference = compress(SmallCNN().eval(), density=0.3)
    report = chain.install(model)
    assert report.batchnorms == ["bn1", "bn2"] and report.to_dict()["batchnorm_affine"] == ["bn1", "bn2"]
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    chain.uninstall(model)
    assert "forward" not in model.bn1.__dict__
    result = settle(model, x, rounds=3)
    held = isinstance(model.bn1.__dict__.get("forward"), batchnorm.AffineForward)
    assert held == (result["decision"] != "dense")
    assert result["chains"]["batchnorm_affine"] == (["bn1", "bn2"] if held else [])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_float64_runs_the_module():
    bn = random_bn(3).double()
    twin = copy.deepcopy(bn)
    batchnorm.install(bn)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(bn(x), twin(x))
    assert bn.forward.module_calls == 1 and bn.forward.affine_calls == 0
