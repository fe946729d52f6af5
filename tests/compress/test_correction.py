"""BatchNorm re-estimation and empirical bias correction (efficientdl.compress.correction).

Every result is checked against an independent computation: the BatchNorm statistics
against the mean and unbiased variance of the BatchNorm's input over all calibration
samples, computed by hand (the residual block's second BatchNorm input recomputed with
an explicit batch normalisation); the bias correction against the original layer's mean
output on the inputs the corrected layer receives (captured by a hook, the layer run
with ``F.linear`` / ``F.conv2d`` and the original weight), in float64.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.compress.calibration import batch_inputs
from efficientdl.compress.correction import correct_bias, original_weights, reestimate_batchnorm
from efficientdl.compress.pruning import apply_mask, weight_mask
from efficientdl.core.state import apply_shared_weight
from efficientdl.errors import RecipeError

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- models
class Block(nn.Module):
    """A residual block with its BatchNorms as attributes (not an nn.Sequential)."""

    def __init__(self, channels=4, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = self.drop(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(x + self.bn2(self.conv2(y)))


class Net(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.block = Block(dropout=dropout)
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.block(x).flatten(1)
        return self.head(self.drop(torch.relu(self.bn(self.fc(h)))))


def _net(dropout=0.0):
    torch.manual_seed(0)
    net = Net(dropout).double()
    with torch.no_grad():  # stale statistics, as after compression
        for bn in (net.block.bn1, net.block.bn2, net.bn):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def _data(sizes=(7, 5, 9), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, 5, 5, generator=g, dtype=torch.float64) + 0.3, torch.zeros(n, dtype=torch.long))
            for n in sizes]


def _moments(values):
    """Per-channel mean and unbiased variance of ``[N, C, *]`` values, over all but the channel."""
    v = values.transpose(0, 1).reshape(values.shape[1], -1)
    return v.mean(1), v.var(1, unbiased=True)


def _batch_norm_train(y, bn):
    """Explicit training-mode batch normalisation (biased batch variance), for the hand computation."""
    dims = [0] + list(range(2, y.dim()))
    mean = y.mean(dims, keepdim=True)
    var = y.var(dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (y.dim() - 2)
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.reshape(shape) + bn.bias.reshape(shape)


# --------------------------------------------------------------------------- BatchNorm re-estimation
def test_reestimate_matches_statistics_by_hand():
    net = _net()
    data = _data()
    with torch.no_grad():
        b = net.block
        in1, in2, in3 = [], [], []
        for x, _ in data:
            y1 = F.conv2d(x, b.conv1.weight, padding=1)
            in1.append(y1)
            y2 = F.conv2d(torch.relu(_batch_norm_train(y1, b.bn1)), b.conv2.weight, padding=1)
            in2.append(y2)
            h = torch.relu(x + _batch_norm_train(y2, b.bn2)).flatten(1)
            in3.append(F.linear(h, net.fc.weight, net.fc.bias))
    summary = reestimate_batchnorm(net, data)
    for bn, ins in ((b.bn1, in1), (b.bn2, in2), (net.bn, in3)):
        mean, var = _moments(torch.cat(ins))
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-10, atol=1e-12)
        assert int(bn.num_batches_tracked) == len(data)
    assert summary["layers"] == ["block.bn1", "block.bn2", "bn"]
    assert summary["batches"] == 3 and summary["samples"] == 21
    assert summary["values"] == {"block.bn1": 21 * 25, "block.bn2": 21 * 25, "bn": 21}
    assert summary["untracked"] == []
    # the pooled variance over all samples, not torch's average of the per-batch variances
    per_batch = torch.stack([_moments(y)[1] for y in in1]).mean(0)
    assert not torch.allclose(b.bn1.running_var, per_batch, rtol=1e-6)


def test_reestimate_max_batches_and_tensor_batches():
    net = _net()
    data = [x for x, _ in _data()]
    summary = reestimate_batchnorm(net, data, max_batches=2)
    with torch.no_grad():
        y1 = torch.cat([F.conv2d(x, net.block.conv1.weight, padding=1) for x in data[:2]])
    mean, var = _moments(y1)
    torch.testing.assert_close(net.block.bn1.running_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net.block.bn1.running_var, var, rtol=1e-10, atol=1e-12)
    assert summary["batches"] == 2 and summary["samples"] == 12


def test_reestimate_restores_momentum_and_modes():
    net = _net(dropout=0.5)
    net.train()
    net.block.eval()                         # a mixed state: the block frozen
    net.bn.momentum = None
    net.block.bn2.momentum = 0.3
    before = {name: m.training for name, m in net.named_modules()}
    reestimate_batchnorm(net, _data())
    assert {name: m.training for name, m in net.named_modules()} == before
    assert net.bn.momentum is None and net.block.bn2.momentum == 0.3 and net.block.bn1.momentum == 0.1


def test_dropout_stays_off():
    """With dropout p=0.5 the statistics are those of the same weights without dropout."""
    data = _data()
    with_dropout, without = _net(dropout=0.5), _net(dropout=0.0)
    reestimate_batchnorm(with_dropout, data)
    reestimate_batchnorm(without, data)
    for a, b in ((with_dropout.block.bn2, without.block.bn2), (with_dropout.bn, without.bn)):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)


def test_batchnorm_subclass_and_untracked():
    class MyBN(nn.BatchNorm1d):
        pass

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), MyBN(4), nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    x = torch.randn(16, 3)
    summary = reestimate_batchnorm(net, [x])
    mean, var = _moments(net[0](x).detach())
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert summary["layers"] == ["1"] and summary["untracked"] == ["3"]


def test_no_batchnorm_is_an_empty_summary():
    net = nn.Sequential(nn.Linear(3, 2))

    def never():
        raise AssertionError("the data should not be read")
        yield

    summary = reestimate_batchnorm(net, never())
    assert summary["layers"] == [] and summary["batches"] == 0


def test_batchnorm_never_run_is_one_line_error_and_restores():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.used = nn.BatchNorm1d(4)
            self.unused = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.used(self.fc(x))

    net = Skips().eval()
    with torch.no_grad():
        net.used.running_mean.fill_(0.7)
    with pytest.raises(RecipeError) as info:
        reestimate_batchnorm(net, [torch.randn(8, 3)])
    message = str(info.value)
    assert "'unused'" in message and "never ran" in message and "\n" not in message
    assert not net.training and not net.used.training
    assert torch.all(net.used.running_mean == 0.7) and net.used.momentum == 0.1
    with pytest.raises(RecipeError, match="no batches"):
        reestimate_batchnorm(net, [])


# --------------------------------------------------------------------------- bias correction
def _layer_inputs(model, module, data):
    """The inputs ``module`` receives when ``model`` runs on the calibration data (eval mode)."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    try:
        with torch.no_grad():
            model.eval()
            for batch in data:
                model(batch_inputs(batch))
    finally:
        handle.remove()
    return seen


def _mean_linear(inputs, weight, bias):
    return torch.cat([F.linear(x, weight, bias).reshape(-1, weight.shape[0]) for x in inputs]).mean(0)


def _mean_conv(inputs, conv, weight, bias):
    outs = [F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups) for x in inputs]
    return torch.cat([o.transpose(0, 1).reshape(o.shape[1], -1) for o in outs], dim=1).mean(1)


def _perturb(module, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.add_(scale * torch.randn(module.weight.shape, generator=g, dtype=module.weight.dtype))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.grouped(x))
        return self.fc(x.flatten(1))


def _conv_data():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64) for n in (4, 6)]


def test_linear_mean_output_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    g = torch.Generator().manual_seed(2)
    data = [(torch.rand(10, 5, generator=g, dtype=torch.float64), None) for _ in range(3)]
    original = original_weights(net)
    biases = {k: m.bias.detach().clone() for k, m in (("0", net[0]), ("2", net[2]))}
    _perturb(net[0], seed=1)
    _perturb(net[2], seed=2)
    result = correct_bias(net, original, data)
    assert list(result["corrected"]) == ["0", "2"] and result["passes"] == 2
    for key, layer in (("0", net[0]), ("2", net[2])):
        inputs = _layer_inputs(net, layer, data)
        layer = copy.deepcopy(layer).requires_grad_(False)
        want = _mean_linear(inputs, original[key], biases[key])
        got = _mean_linear(inputs, layer.weight, layer.bias)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        before = _mean_linear(inputs, layer.weight, biases[key])
        info = result["corrected"][key]
        assert info["error_before"] == pytest.approx(float((before - want).abs().mean()), rel=1e-9)
        assert info["error_after"] < 1e-12 and info["error_before"] > 1e-3
        assert info["correction"] == pytest.approx(float((layer.bias - biases[key]).norm()), rel=1e-12)
        assert info["samples"] == 30


def test_conv_grouped_depthwise_padding_mean_output_restored():
    torch.manual_seed(0)
    net = ConvNet().double()
    data = _conv_data()
    original = original_weights(net)
    biases = {name: m.bias.detach().clone() for name, m in net.named_children()}
    for i, name in enumerate(("conv", "depthwise", "grouped", "fc")):
        _perturb(getattr(net, name), seed=i)
    result = correct_bias(net, original, data)
    assert list(result["corrected"]) == ["conv", "depthwise", "grouped", "fc"]
    assert result["passes"] == 4 and result["skipped"] == {}
    for name in ("conv", "depthwise", "grouped"):
        conv = getattr(net, name)
        inputs = _layer_inputs(net, conv, data)
        want = _mean_conv(inputs, conv, original[name], biases[name])
        got = _mean_conv(inputs, conv, conv.weight, conv.bias)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert result["corrected"][name]["error_after"] < 1e-12
    inputs = _layer_inputs(net, net.fc, data)
    torch.testing.assert_close(_mean_linear(inputs, net.fc.weight, net.fc.bias),
                               _mean_linear(inputs, original["fc"], biases["fc"]), rtol=0, atol=1e-12)


def test_masked_layer_keeps_its_mask():
    torch.manual_seed(0)
    net = ConvNet().double()
    data = _conv_data()
    original = original_weights(net)
    biases = {name: m.bias.detach().clone() for name, m in net.named_children()}
    mask = torch.rand(net.conv.weight.shape) > 0.5
    apply_mask(net.conv, mask, "weight")
    _perturb(net.fc)
    values = {name: m.weight.detach().clone() for name, m in net.named_children()}
    out_shape = net(data[0]).shape
    result = correct_bias(net, original, data)
    assert list(result["corrected"]) == ["conv", "fc"]
    assert result["skipped"] == {"depthwise": "unchanged", "grouped": "unchanged"}
    assert torch.equal(weight_mask(net.conv), mask)
    for name, m in net.named_children():
        assert torch.equal(m.weight, values[name])
    assert net(data[0]).shape == out_shape
    inputs = _layer_inputs(net, net.conv, data)
    torch.testing.assert_close(_mean_conv(inputs, net.conv, net.conv.weight, net.conv.bias),
                               _mean_conv(inputs, net.conv, original["conv"], biases["conv"]), rtol=0, atol=1e-12)
    inputs = _layer_inputs(net, net.fc, data)
    torch.testing.assert_close(_mean_linear(inputs, net.fc.weight, net.fc.bias),
                               _mean_linear(inputs, original["fc"], biases["fc"]), rtol=0, atol=1e-12)


def test_weight_shared_layer_keeps_its_codebook():
    """SharedWeight holds float32 centroids: a float32 model, compared at float32 precision."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    data = [torch.rand(16, 6, generator=torch.Generator().manual_seed(4))]
    original = original_weights(net)
    bias = net[2].bias.detach().clone()
    w = net[2].weight.detach()
    centroids = torch.tensor([-0.2, 0.05, 0.2])
    indices = 1 + (w - centroids.reshape(-1, 1, 1)).abs().argmin(0)       # nearest of three centroids
    shared = apply_shared_weight(net[2], "weight", centroids, indices, bits=2)
    value = net[2].weight.detach().clone()
    result = correct_bias(net, original, data)
    assert list(result["corrected"]) == ["2"] and result["skipped"] == {"0": "unchanged"}
    assert torch.equal(net[2].weight, value) and torch.equal(shared.indices, indices)
    assert torch.equal(shared.centroids.detach(), centroids)
    inputs = [x.double() for x in _layer_inputs(net, net[2], data)]
    torch.testing.assert_close(_mean_linear(inputs, value.double(), net[2].bias.detach().double()),
                               _mean_linear(inputs, original["2"].double(), bias.double()), rtol=0, atol=1e-6)
    assert result["corrected"]["2"]["error_after"] < 1e-6 < result["corrected"]["2"]["error_before"]


def test_layer_without_bias_is_skipped_and_listed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)).double()
    data = [torch.randn(8, 4, dtype=torch.float64)]
    original = original_weights(net)
    _perturb(net[0])
    _perturb(net[2])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    result = correct_bias(net, original, data)
    assert result["skipped"] == {"0": "no bias"} and list(result["corrected"]) == ["2"]
    assert set(net.state_dict()) == set(state)
    assert torch.equal(net[0].weight, state["0.weight"]) and torch.equal(net[2].weight, state["2.weight"])
    assert not torch.equal(net[2].bias, state["2.bias"])


def test_bias_correction_errors():
    net = nn.Sequential(nn.Linear(4, 2))
    original = original_weights(net)
    with pytest.raises(RecipeError, match="one-pass"):
        correct_bias(net, original, iter([torch.randn(3, 4)]))
    with pytest.raises(RecipeError, match="no weight tensor 'nope'"):
        correct_bias(net, {"nope": torch.zeros(2, 4)}, [torch.randn(3, 4)])
    with pytest.raises(RecipeError, match="shape"):
        correct_bias(net, {"0": torch.zeros(4, 2)}, [torch.randn(3, 4)])
    assert correct_bias(net, original, [torch.randn(3, 4)]) == {"corrected": {}, "skipped": {"0": "unchanged"},
                                                                 "passes": 0}
