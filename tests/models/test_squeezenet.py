"""SqueezeNet: the ImageNet configurations' exact parameter counts (counted by hand from
the layer table), the Fire module, and the 28×28 variant."""

import pytest
import torch

from efficientdl import models
from efficientdl.errors import ModelError
from efficientdl.models.squeezenet import FIRES, Fire, SqueezeNet


def conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def expected_params(conv1_out, conv1_k, in_channels=3, classes=1000):
    total, channels = conv_params(in_channels, conv1_out, conv1_k), conv1_out
    for s, e1, e3 in FIRES:
        total += conv_params(channels, s, 1) + conv_params(s, e1, 1) + conv_params(s, e3, 3)
        channels = e1 + e3
    return total + conv_params(channels, classes, 1)


def test_imagenet_parameter_counts():
    v10 = SqueezeNet(1000, 3, "1.0", small=False)
    v11 = SqueezeNet(1000, 3, "1.1", small=False)
    assert sum(p.numel() for p in v10.parameters()) == expected_params(96, 7) == 1_248_424
    assert sum(p.numel() for p in v11.parameters()) == expected_params(64, 3) == 1_235_496
    assert 4 * 1_248_424 / 2 ** 20 == pytest.approx(4.76, abs=0.01)            # the paper's "4.8 MB"
    with torch.no_grad():
        assert v10(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert v11(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_fire_module_concatenates_the_expands():
    fire = Fire(96, 16, 64, 64)
    x = torch.randn(2, 96, 13, 13)
    y = fire(x)
    assert y.shape == (2, 128, 13, 13) and fire.out_channels == 128
    s = torch.relu(fire.squeeze(x))
    torch.testing.assert_close(y[:, :64], torch.relu(fire.expand1x1(s)))
    torch.testing.assert_close(y[:, 64:], torch.relu(fire.expand3x3(s)))


def test_small_variant_from_the_registry():
    model = models.create("squeezenet")
    assert model.edl_arch == {"name": "squeezenet", "kwargs": {"num_classes": 10, "in_channels": 1,
                                                               "version": "1.1", "small": True}}
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == expected_params(64, 3, 1, 10)
    with pytest.raises(ModelError, match="version"):
        models.create("squeezenet", version="2.0")


def test_small_variant_feature_maps_shrink_28_14_7_3():
    model = models.create("squeezenet")
    sizes, x = [], torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        for layer in model.features:
            x = layer(x)
            if isinstance(layer, torch.nn.MaxPool2d):
                sizes.append(x.shape[-1])
    assert sizes == [14, 7, 3]                  # ceil((n - 3) / 2) + 1 for n = 28, 14, 7
    assert x.shape == (1, 512, 3, 3)
