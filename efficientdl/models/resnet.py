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
"""

from __future__ import annotations

from torch import nn


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
    """

    STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        blocks, width = [], 64
        for channels, stride in self.STAGES:
            blocks += [BasicBlock(width, channels, stride), BasicBlock(channels, channels, 1)]
            width = channels
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))
