"""ResNet-18 for 32×32 inputs (He, Zhang, Ren, Sun, "Deep residual learning for image
recognition", CVPR'16), the network of the mixed-precision throughput benchmark.

The CIFAR-style variant that most training benchmarks use: a 3×3 stride-1 stem with 64
channels (no 7×7 stride-2 convolution and no max-pooling, which would shrink 32×32
inputs too early), then four stages of two *basic blocks* each, with 64, 128, 256 and
512 channels; every stage after the first halves the feature map with a stride-2 first
convolution and a 1×1 stride-2 projection on its shortcut.  A basic block is

    y = ReLU( BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x) ).

Global average pooling and one fully connected layer give the class scores.  With 3
input channels and 10 classes it has 11,173,962 parameters (44.7 MB in fp32) and
0.56 G multiply-accumulates per 32×32 image.

``width`` is the stem's channel count (64 in the paper); the stages have ``width``,
``2·width``, ``4·width`` and ``8·width`` channels, so ``width=16`` is a ResNet-18 of the
same depth and graph with 1/16 of the multiply-accumulates (a CPU-sized stand-in,
as the wide-ResNet family scales widths, Zagoruyko & Komodakis 2016).
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelError


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR-style stem (see the module docstring).

    Args:
        num_classes: outputs of the final fully connected layer.
        in_channels: channels of the input images (3 for CIFAR, 1 for Fashion-MNIST).
        width: channels of the stem and the first stage (64 in the paper); stage ``s``
            has ``width · 2^s``.

    Raises:
        ModelError: ``width`` is not a positive integer.
    """

    #: (channel multiple of ``width``, stride of the stage's first block)
    STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ModelError(f"model resnet18: width is {width!r} (expected a positive integer)")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        blocks, channels_in = [], width
        for multiple, stride in self.STAGES:
            channels = multiple * width
            blocks += [BasicBlock(channels_in, channels, stride), BasicBlock(channels, channels, 1)]
            channels_in = channels
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


# --------------------------------------------------------------------------- ResNet-50 (ImageNet)
class Bottleneck(nn.Module):
    """The bottleneck block of ResNet-50, v1.5: 1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4.

    ``y = ReLU(BN(conv1×1(ReLU(BN(conv3×3_s(ReLU(BN(conv1×1(x)))))))) + downsample(x))``.
    Version 1.5 (torchvision, NVIDIA DeepLearningExamples) puts the stride on the 3×3
    convolution instead of the first 1×1 of the original paper.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet-50 v1.5 for ImageNet (He et al. CVPR'16; torchvision layout and names).

    A 7×7 stride-2 stem with 64 channels, 3×3 stride-2 max-pooling, then stages of 3, 4,
    6 and 3 bottleneck blocks of widths 64, 128, 256, 512 (outputs ×4), global average
    pooling and one fully connected layer.  With 3 input channels and 1000 classes it has
    25,557,032 parameters and 4.09 G multiply-accumulates per 224×224 image.

    Args:
        num_classes: outputs of the final fully connected layer (1000 for ImageNet).
        in_channels: channels of the input images (3).
    """

    STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        width_in = 64
        for i, (width, blocks, stride) in enumerate(self.STAGES, start=1):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(width_in, width, stride if b == 0 else 1))
                width_in = width * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
