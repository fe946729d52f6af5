"""BatchNorm folding: the folded model computes the same function (eval mode), checked
against the unfolded model, and the folded structure survives the file."""

import pytest
import torch
from torch import nn

from efficientdl import format as fmt, models
from efficientdl.compress.fold import fold_batchnorm


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
    assert result == {"folded": [["0", "1"], ["3", "4"], ["6", "7"]], "left": ["8"]}
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
