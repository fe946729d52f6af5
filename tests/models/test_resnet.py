"""ResNet-18 (32×32 variant) against hand-counted parameters and shapes."""

import torch
from torch import nn

from efficientdl.models import create


def conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + 2 * cout          # bias-free conv + BN weight and bias


def hand_count(in_channels: int, classes: int) -> int:
    total = conv_bn(in_channels, 64, 3)                                      # stem
    width = 64
    for channels in (64, 128, 256, 512):
        projection = conv_bn(width, channels, 1) if channels != width else 0
        total += conv_bn(width, channels, 3) + conv_bn(channels, channels, 3) + projection    # first block
        total += 2 * conv_bn(channels, channels, 3)                                              # second block
        width = channels
    return total + 512 * classes + classes                                   # fc


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
