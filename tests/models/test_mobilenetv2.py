"""MobileNetV2: the ImageNet configuration's published parameter count, a hand count of
the small variant, the stride schedule for 28×28, the "same"-padding subclass, one
training step, the file round trip and tensor discovery."""

import pytest
import torch
from torch import nn

from efficientdl import format as fmt
from efficientdl.core.tensors import compressible_tensors
from efficientdl.models import create
from efficientdl.models.mobilenetv2 import (
    InvertedResidual,
    MobileNetV2,
    SamePadConv2d,
    make_divisible,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def bn(c):
    return 2 * c


def hand_count(in_channels, classes, width=1.0):
    """Σ over the paper's Table 2 (bias-free convolutions, BN γ and β, the classifier)."""
    c = make_divisible(32 * width)
    total = in_channels * c * 9 + bn(c)                                   # stem 3×3
    for t, out, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1)):
        out = make_divisible(out * width)
        for _ in range(n):
            hidden = c * t
            expand = c * hidden + bn(hidden) if t != 1 else 0
            total += expand + hidden * 9 + bn(hidden) + hidden * out + bn(out)   # expand, depthwise, project
            c = out
    last = make_divisible(1280 * max(1.0, width))
    return total + c * last + bn(last) + last * classes + classes


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_make_divisible_as_torchvision():
    assert [make_divisible(v) for v in (32, 32 * 0.35, 16 * 0.35, 24 * 0.75, 1280 * 1.4, 3.0)] == \
        [32, 16, 8, 24, 1792, 8]


def test_imagenet_configuration_has_torchvisions_parameter_count():
    model = MobileNetV2(num_classes=1000, in_channels=3, imagenet=True)
    assert count(model) == hand_count(3, 1000) == 3_504_872               # torchvision mobilenet_v2
    sizes = []
    model.head_conv.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape)))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert sizes == [(1, 1280, 7, 7)]                                     # a 32× reduction


@pytest.mark.parametrize("width", [1.0, 0.5, 0.35])
def test_small_variant_matches_the_hand_count(width):
    assert count(create("mobilenetv2", width=width)) == hand_count(1, 10, width)
    assert count(create("mobilenetv2", width=1.0, in_channels=3, num_classes=1000)) == 3_504_872


@pytest.mark.parametrize("side", [28, 32])
def test_small_inputs_are_reduced_to_4x4_and_give_scores(side):
    model = create("mobilenetv2", num_classes=7, in_channels=3, width=0.35).eval()
    sizes = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 7)
    half, quarter = -(-side // 2), -(-side // 4)
    assert sizes == [side] + [half] * 2 + [quarter] * 3 + [4] * 11
    residual = [b.use_residual for b in model.blocks]
    assert residual == [False, False, True, False, True, True, False, True, True, True, False, True, True,
                        False, True, True, False]
    assert isinstance(model.blocks[0], InvertedResidual) and model.blocks[0].expand is None


def test_same_padding_conv_pads_like_tensorflow():
    conv = SamePadConv2d(4, 4, 3, stride=2, groups=4, bias=True)
    x = torch.randn(1, 4, 8, 8)
    # 8 → ⌈8/2⌉ = 4 positions: total padding (4−1)·2 + 3 − 8 = 1, nothing before, one after
    expected = nn.functional.conv2d(nn.functional.pad(x, [0, 1, 0, 1]), conv.weight, conv.bias, 2, groups=4)
    assert torch.equal(conv(x), expected) and conv(x).shape == (1, 4, 4, 4)
    assert conv(torch.randn(1, 4, 7, 7)).shape == (1, 4, 4, 4)
    assert SamePadConv2d(2, 3, 3)(torch.randn(1, 2, 5, 6)).shape == (1, 3, 5, 6)
    assert all(isinstance(b.depthwise, SamePadConv2d) for b in create("mobilenetv2").blocks)


def test_one_training_step_changes_the_weights():
    torch.manual_seed(0)
    model = create("mobilenetv2", width=0.35)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "classifier.weight" in changed and "blocks.3.depthwise.weight" in changed and "stem_conv.weight" in changed


def test_round_trips_through_the_file(tmp_path):
    torch.manual_seed(0)
    model = create("mobilenetv2", width=0.35, num_classes=5).eval()
    assert model.edl_arch == {"name": "mobilenetv2", "kwargs": {"num_classes": 5, "in_channels": 1, "width": 0.35}}
    fmt.save(model, tmp_path / "m.edlz")
    rebuilt = fmt.load(tmp_path / "m.edlz").eval()
    assert isinstance(rebuilt, MobileNetV2) and isinstance(rebuilt.blocks[2].depthwise, SamePadConv2d)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_compressible_tensors_finds_depthwise_and_pointwise_weights():
    model = create("mobilenetv2", width=0.35)
    keys = {t.key: tuple(t.value.shape) for t in compressible_tensors(model)}
    assert keys["blocks.1.depthwise"] == (48, 1, 3, 3)          # 8 channels in (16·0.35 → 8), hidden 8·6
    assert keys["blocks.1.expand"] == (48, 8, 1, 1) and keys["blocks.1.project"] == (8, 48, 1, 1)
    assert keys["stem_conv"] == (16, 1, 3, 3) and keys["head_conv"] == (1280, 112, 1, 1)
    assert keys["classifier"] == (10, 1280)
    assert len(keys) == 1 + 2 + 16 * 3 + 2 and not any("bn" in k for k in keys)
