"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted residuals
and linear bottlenecks", CVPR'18), written as torchvision and timm write it.

The network is a 3×3 stem convolution followed by *inverted residual* blocks.  A block
with expansion ``t``, input ``x`` with ``c_in`` channels and output ``c_out`` channels is

    h = ReLU6(BN(conv1×1(x)))                 expand to t·c_in channels (skipped when t = 1)
    h = ReLU6(BN(depthwise3×3_s(h)))           one 3×3 filter per channel, stride s
    y = BN(conv1×1(h))                         linear bottleneck: project, no activation
    y = y + x      when s = 1 and c_in = c_out (the residual joins the thin bottlenecks).

The block table of the paper (Table 2) — ``(t, c, n, s)``: expansion, channels, repeats,
stride of the first repeat — is :data:`MobileNetV2.BLOCKS`; a 1×1 convolution to 1280
channels, global average pooling, dropout and one fully connected layer finish it.
The width multiplier ``α`` (``width``) scales every channel count, rounded to a multiple
of 8 as torchvision's ``_make_divisible`` does (:func:`make_divisible`); the last
convolution keeps ``1280 · max(1, α)`` channels.

ImageNet configuration (``imagenet=True``): stride-2 stem and strides (1, 2, 2, 2, 1, 2,
1), a 32× reduction (224 → 7).  With width 1.0, 3 input channels and 1000 classes it
has 3,504,872 parameters, exactly torchvision's ``mobilenet_v2``.

Small-input configuration (the default, for 28×28 Fashion-MNIST or 32×32 CIFAR-sized
images): a 32× reduction would leave a 28×28 image below 1×1, so the stem has stride 1
and only the stages of 24, 32 and 64 channels reduce (strides 1, 2, 2, 2, 1, 1, 1 —
the 160-channel stage keeps its resolution): an 8× reduction, 28 → 14 → 7 → 4 and
32 → 16 → 8 → 4, so the last blocks work on 4×4 maps.  The parameter count does not
depend on strides, so the small variant at width 1.0 with 3 channels and 1000 classes
has the ImageNet count too.

The depthwise convolutions are :class:`SamePadConv2d`, the TensorFlow-"same"-padding
subclass of ``nn.Conv2d`` that EfficientNet and MobileNet ports (timm's ``Conv2dSame``)
use: it pads in its own ``forward`` with ``F.pad`` and then calls ``F.conv2d``, so the
rest of the toolkit (discovery, pruning, BatchNorm folding, the file) is exercised on an
``nn.Conv2d`` subclass that is not the plain class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` without losing more
    than 10% (torchvision's and TensorFlow's ``_make_divisible``).

    Args:
        value: the scaled channel count, e.g. ``32 · α``.
        divisor: the multiple (8).
        min_value: the smallest result (``divisor`` when ``None``).

    Returns:
        ``max(min_value, ⌊value + divisor/2⌋ rounded down to a multiple of divisor)``,
        plus ``divisor`` when that is below ``0.9 · value``.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding, computed per input in ``forward``.

    For input size ``i``, stride ``s``, kernel ``k`` and dilation ``d`` along one axis the
    output has ``⌈i / s⌉`` positions; the total padding is
    ``p = max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0)``, ``⌊p/2⌋`` before and the rest after
    (asymmetric when ``p`` is odd, which ``nn.Conv2d``'s symmetric ``padding`` cannot
    express).  Constructed like ``nn.Conv2d`` without ``padding``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for axis in (1, 0):                                   # F.pad lists the last axis first
            size, stride = x.shape[-2 + axis], self.stride[axis]
            kernel, dilation = self.kernel_size[axis], self.dilation[axis]
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class InvertedResidual(nn.Module):
    """One inverted residual block: 1×1 expand, 3×3 depthwise, 1×1 linear projection
    (see the module docstring), BatchNorm after each convolution, as attributes.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the depthwise convolution (1 or 2).
        expansion: ``t``, the hidden width is ``t · in_channels``; no expand layer when 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = self.bn1 = None
        if expansion != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = SamePadConv2d(hidden, hidden, 3, stride, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.expand is None else self.act(self.bn1(self.expand(x)))
        h = self.act(self.bn2(self.depthwise(h)))
        h = self.bn3(self.project(h))
        return x + h if self.use_residual else h


class MobileNetV2(nn.Module):
    """MobileNetV2 (see the module docstring for the blocks and the two configurations).

    Args:
        num_classes: outputs of the classifier (10 for Fashion-MNIST, 1000 for ImageNet).
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for RGB).
        width: the width multiplier ``α``; channel counts ``make_divisible(c · α)``.
        imagenet: the ImageNet strides (stride-2 stem, 32× reduction, for 224×224) instead
            of the small-input strides (stride-1 stem, 8× reduction, for 28×28 or 32×32).
        dropout: dropout probability before the classifier (0.2 as torchvision).

    Returns (``forward``):
        Class scores, shape ``(batch, num_classes)``.
    """

    #: (t, c, n, s): expansion, output channels, repeats, stride of the first repeat (Table 2)
    BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))
    #: the strides of the small-input configuration (the 160-channel stage keeps its resolution)
    SMALL_STRIDES = (1, 2, 2, 2, 1, 1, 1)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 imagenet: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        strides = [s for *_, s in self.BLOCKS] if imagenet else list(self.SMALL_STRIDES)
        self.stem_conv = nn.Conv2d(in_channels, channels, 3, 2 if imagenet else 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(channels)
        blocks = []
        for (t, c, n, _), stride in zip(self.BLOCKS, strides):
            out = make_divisible(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, stride if i == 0 else 1, t))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = nn.Conv2d(channels, last, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(last)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():                                  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem_bn(self.stem_conv(x)))
        x = self.blocks(x)
        x = self.act(self.head_bn(self.head_conv(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))
