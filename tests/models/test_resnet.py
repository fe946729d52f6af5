"""ResNet-18 (32×32 variant) against hand-counted parameters and shapes."""

import pytest
import torch
from torch import nn

from efficientdl.errors import ModelError
from efficientdl.models import create


def conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + 2 * cout          # bias-free conv + BN weight and bias


def hand_count(in_channels: int, classes: int, width: int = 64) -> int:
    total = conv_bn(in_channels, width, 3)                                   # stem
    stages = (width, 2 * width, 4 * width, 8 * width)
    for channels in stages:
        projection = conv_bn(width, channels, 1) if channels != width else 0
        total += conv_bn(width, channels, 3) + conv_bn(channels, channels, 3) + projection    # first block
        total += 2 * conv_bn(channels, channels, 3)                                              # second block
        width = channels
    return total + stages[-1] * classes + classes                            # fc


def test_parameter_count_matches_hand_count_and_the_published_figure():
    model = create("resnet18", in_channels=3)
    count = sum(p.numel() for p in model.parameters())
    assert count == hand_count(3, 10) == 11_173_962
    assert sum(p.numel() for p in create("resnet18").parameters()) == hand_count(1, 10)


def test_feature_map_sizes_and_output():
    model = create("resnet18", num_classes=7, in_channels=1).eval()
    sizes = []
    for block in model.layers:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)
    assert sizes == [(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 2 + [(512, 4, 4)] * 2
    shortcuts = [isinstance(b.shortcut[0], nn.Conv2d) if len(b.shortcut) else False for b in model.layers]
    assert shortcuts == [False, False, True, False, True, False, True, False]


def test_trains_one_step_and_rebuilds_from_its_record():
    torch.manual_seed(0)
    model = create("resnet18")
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.edl_arch == {"name": "resnet18", "kwargs": {"num_classes": 10, "in_channels": 1}}


def test_width_scales_every_stage_and_matches_the_hand_count():
    model = create("resnet18", width=16).eval()
    assert sum(p.numel() for p in model.parameters()) == hand_count(1, 10, width=16)
    sizes = []
    for block in model.layers:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [s[0] for s in sizes] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert model.edl_arch["kwargs"]["width"] == 16


@pytest.mark.parametrize("width", [0, -4, 2.5, True])
def test_bad_width_is_a_model_error(width):
    with pytest.raises(ModelError, match="width"):
        create("resnet18", width=width)
