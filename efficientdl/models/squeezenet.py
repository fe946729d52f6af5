"""SqueezeNet (Iandola et al., 2016): AlexNet-level accuracy with 50× fewer parameters.

A **Fire module** squeezes the input with ``s`` 1×1 filters, then expands with ``e₁``
1×1 and ``e₃`` 3×3 filters whose outputs are concatenated (``e₁ + e₃`` channels), each
followed by a ReLU.  The network (v1.0): conv1 96×7×7/2, max-pool, fire2–4, max-pool,
fire5–8, max-pool, fire9, dropout 0.5, conv10 1×1 to the classes, ReLU, global average
pooling — 1,248,424 parameters for 1000 ImageNet classes (4.99 MB in fp32; the paper's
"4.8 MB" is 4.76 MiB).  v1.1 uses a 64×3×3/2 conv1 and pools earlier: 1,235,496
parameters, 2.4× less computation.

``small=True`` is the variant for 28×28 single-channel inputs (MNIST family): conv1
becomes 64×3×3 with stride 1 and padding 1 (no stride-2 downsampling), and the three
max-poolings of v1.1 shrink the feature maps 28 → 14 → 7 → 3.

Training the plain network (no normalisation layers) from scratch is delicate: conv10 is
initialised small (N(0, 0.01)) so that the ReLU before the global pooling starts alive,
which makes the first epochs slow at a low learning rate, while a high one (≥ 0.02 with
SGD, momentum 0.9) pushes every class score below zero, after which that ReLU passes no
gradient and the model predicts one class.  A linear learning-rate warmup together with
gradient-norm clipping (``Trainer(warmup_epochs=1, clip_grad_norm=1.0)``, as in
``recipes/squeezenet.yaml``) trains it at lr 0.04 (91.63% on Fashion-MNIST after 12
epochs); either one alone did not (warmup alone still killed the ReLU; clipping alone at
lr 0.02 stayed near 34% after 3 epochs on 12k images).
"""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.errors import ModelError

# (squeeze, expand 1×1, expand 3×3) of fire2 … fire9
FIRES = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128), (48, 192, 192), (48, 192, 192),
         (64, 256, 256), (64, 256, 256)]


class Fire(nn.Module):
    """squeeze 1×1 → ReLU → [expand 1×1 → ReLU ‖ expand 3×3 (pad 1) → ReLU] concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet v1.0 / v1.1 (see the module docstring).

    Args:
        num_classes: outputs of conv10.
        in_channels: input channels.
        version: ``"1.0"`` or ``"1.1"``.
        small: the 28×28 variant (3×3 stride-1 conv1, no first pooling).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, version: str = "1.1",
                 small: bool = True) -> None:
        super().__init__()
        if version not in ("1.0", "1.1"):
            raise ModelError(f"model squeezenet: version must be '1.0' or '1.1', got {version!r}")
        for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"model squeezenet: {label} is {value!r} (expected a positive integer)")
        self.edl_arch = {"name": "squeezenet", "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                                          "version": version, "small": small}}
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        if small:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True)]
            channels, pools_after = 64, (1, 3)          # pool after conv1, fire3 and fire5 (v1.1 layout)
        elif version == "1.0":
            layers = [nn.Conv2d(in_channels, 96, 7, stride=2), nn.ReLU(inplace=True), pool()]
            channels, pools_after = 96, (2, 6)          # pool after fire4 and fire8
        else:
            layers = [nn.Conv2d(in_channels, 64, 3, stride=2), nn.ReLU(inplace=True), pool()]
            channels, pools_after = 64, (1, 3)          # pool after fire3 and fire5
        if small:
            layers.append(pool())
        for i, (s, e1, e3) in enumerate(FIRES):
            fire = Fire(channels, s, e1, e3)
            layers.append(fire)
            channels = fire.out_channels
            if i in pools_after:
                layers.append(pool())
        self.features = nn.Sequential(*layers)
        final = nn.Conv2d(channels, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        # the reference initialisation: Kaiming-uniform convolutions, zero biases, and a small
        # final layer (N(0, 0.01)) so that the ReLU before the pooling starts alive
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).flatten(1)
