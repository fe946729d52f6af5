"""BatchNorm folding: the folded model computes the same function (eval mode), checked
against the unfolded model, and the folded structure survives the file."""

import pytest
import torch
from torch import nn

from efficientdl import format as fmt, models
from efficientdl.compress.fold import fold_batchnorm


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


@pytest.mark.parametrize("bias", [True, False])
def test_folding_keeps_the_function(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=bias), _trained_bn(nn.BatchNorm2d(6)), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, groups=2), _trained_bn(nn.BatchNorm2d(4, affine=False)),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5), _trained_bn(nn.BatchNorm1d(5)),
                          nn.BatchNorm1d(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    result = fold_batchnorm(model)
    assert result == {"folded": [["0", "1"], ["3", "4"], ["6", "7"]], "left": ["8"], "traced": True}
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_hand_worked_fold():
    layer = nn.Linear(1, 1)
    bn = nn.BatchNorm1d(1).eval()
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0 - bn.eps)       # √(σ² + ε) = 2
        bn.weight.fill_(5.0)
        bn.bias.fill_(7.0)
    model = nn.Sequential(layer, bn)
    fold_batchnorm(model)
    # s = 5 / 2 = 2.5; W' = 2.5 · 2 = 5; b' = 2.5 · (1 − 3) + 7 = 2
    assert model[0].weight.item() == 5.0 and model[0].bias.item() == 2.0


class ConvBN(nn.Module):
    """A registry model with BatchNorm (registered for this test)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.features(x)


models.register("test-conv-bn")(ConvBN)


def test_folded_registry_model_rebuilds_from_the_file(tmp_path):
    torch.manual_seed(0)
    model = models.create("test-conv-bn").eval()
    _trained_bn(model.features[1])
    x = torch.randn(2, 1, 12, 12)
    expected = model(x)
    fold_batchnorm(model)
    assert model.edl_arch["transforms"] == [{"op": "fold_bn", "pairs": [["features.0", "features.1"]]}]
    fmt.save(model, tmp_path / "f.edlz")
    rebuilt = fmt.load(tmp_path / "f.edlz")
    assert isinstance(rebuilt.features[1], nn.Identity) and rebuilt.features[0].bias is not None
    assert torch.allclose(rebuilt(x), expected, atol=1e-5)


def test_recipe_folds_batchnorm_before_pruning(tmp_path):
    from efficientdl.compress import load_recipe, pipeline

    torch.manual_seed(0)
    model = models.create("test-conv-bn")
    _trained_bn(model.features[1])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test-conv-bn\nfold_batchnorm: true\nprune:\n  sparsity: 0.5\n  epochs: 0\n")
    batches = [(torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))) for _ in range(2)]
    result = pipeline.run(model, batches, batches, load_recipe(recipe), pretrained=True, progress=False,
                          log=lambda *_: None)
    assert result.stages[0].settings["fold_batchnorm"]["folded"] == [["features.0", "features.1"]]
    decoded = fmt.decode(result.file_bytes)
    assert "features.1.running_mean" not in decoded.tensors and "features.0.bias" in decoded.tensors
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: test-conv-bn\nfold_batchnorm: 1\n")
    with pytest.raises(Exception, match="bad.yaml:2: fold_batchnorm"):
        load_recipe(bad)


# --------------------------------------------------------------------------- any graph torch.fx traces
class ResidualBlock(nn.Module):
    """torchvision style: BatchNorm as attributes, the block's own forward, a projection shortcut."""

    def __init__(self, cin=3, cout=6):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(cout)
        self.fc = nn.Linear(cout, 4)
        self.fc_bn = nn.BatchNorm1d(4)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)) + self.proj_bn(self.proj(x)))
        return self.fc_bn(self.fc(out.mean((2, 3))))


class SameConv(nn.Conv2d):
    """An EfficientNet-port "same"-padding convolution: its own forward pads, then F.conv2d."""

    def forward(self, x):
        return nn.functional.conv2d(nn.functional.pad(x, [0, 1, 0, 1]), self.weight, self.bias, self.stride,
                                    0, self.dilation, self.groups)


class SameConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SameConv(3, 6, 3, stride=2, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return nn.functional.relu6(self.bn(self.conv(x)))


def _trained(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _trained_bn(m)
    return model.eval()


def _folds_exactly(model, x):
    expected = model(x)
    result = fold_batchnorm(model)
    assert torch.allclose(model(x), expected, atol=1e-5)
    return result


def test_folds_a_residual_block_with_batchnorm_as_attributes():
    torch.manual_seed(0)
    model = _trained(ResidualBlock())
    result = _folds_exactly(model, torch.randn(3, 3, 8, 8))
    assert result == {"folded": [["conv1", "bn1"], ["conv2", "bn2"], ["proj", "proj_bn"], ["fc", "fc_bn"]],
                      "left": [], "traced": True}
    assert all(isinstance(getattr(model, n), nn.Identity) for n in ("bn1", "bn2", "proj_bn", "fc_bn"))
    assert model.conv1.bias is not None


def test_folds_into_a_conv2d_subclass_with_its_own_forward():
    torch.manual_seed(0)
    model = _trained(SameConvNet())
    result = _folds_exactly(model, torch.randn(2, 3, 9, 9))
    assert result["folded"] == [["conv", "bn"]] and result["traced"] and isinstance(model.conv, SameConv)


def test_a_conv_output_with_a_second_user_is_left():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y            # the unnormalised output is used too: folding would change it

    torch.manual_seed(0)
    model = _trained(TwoUsers())
    result = _folds_exactly(model, torch.randn(2, 3, 6, 6))
    assert result == {"folded": [], "left": ["bn"], "traced": True} and isinstance(model.bn, nn.BatchNorm2d)
    assert "transforms" not in getattr(model, "edl_arch", {})


def test_a_shared_conv_and_a_weight_standardising_subclass_are_left():
    class StdConv(nn.Conv2d):                 # timm's StdConv2d: the fold's scale would be normalised away
        def forward(self, x):
            w = self.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
            return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.std = StdConv(3, 4, 3)
            self.bn_std = nn.BatchNorm2d(4)
            self.shared = nn.Conv2d(4, 4, 1)
            self.bn_shared = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn_std(self.std(x))
            return self.bn_shared(self.shared(y)) + self.shared(y)     # one module called twice

    torch.manual_seed(0)
    model = _trained(Odd())
    assert _folds_exactly(model, torch.randn(2, 3, 6, 6)) == {
        "folded": [], "left": ["bn_std", "bn_shared"], "traced": True}


def test_an_untraceable_model_falls_back_to_the_sequential_rule_and_says_so():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.features(x)
            if x.sum() > 0:                  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    torch.manual_seed(0)
    model = _trained(DataDependent())
    result = _folds_exactly(model, torch.randn(2, 3, 6, 6))
    assert result == {"folded": [["features.0", "features.1"]], "left": ["bn"], "traced": False}


def test_every_batchnorm_of_mobilenetv2_folds_and_the_file_replays_the_fold(tmp_path):
    torch.manual_seed(0)
    model = _trained(models.create("mobilenetv2", width=0.35))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(2, 1, 28, 28)
    result = _folds_exactly(model, x)
    assert result["traced"] and result["left"] == [] and sorted(n for _, n in result["folded"]) == sorted(norms)
    assert len(norms) == 52 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.edl_arch["transforms"] == [{"op": "fold_bn", "pairs": result["folded"]}]
    fmt.save(model, tmp_path / "m.edlz")
    rebuilt = fmt.load(tmp_path / "m.edlz").eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rebuilt.modules())
    assert rebuilt.edl_arch["transforms"] == model.edl_arch["transforms"]
    assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
