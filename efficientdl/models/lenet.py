"""The two LeNet networks of the Deep Compression experiments (Han et al.).

* LeNet-300-100: a three-layer perceptron, 784 -> 300 -> 100 -> 10 with ReLU, 266,610
  parameters on 28x28 inputs.
* LeNet-5 (Caffe variant, the one the papers prune and quantize): two 5x5
  convolutions with 20 and 50 maps, each followed by 2x2 max pooling (no
  non-linearity after the convolutions, as in Caffe's ``lenet.prototxt``), then
  800 -> 500 ReLU -> 10; 431,080 parameters on 28x28 inputs.

Each model stores its constructor arguments in ``edl_arch`` so that a checkpoint or
a compressed file can rebuild it through :func:`efficientdl.models.create`.
"""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.errors import ModelError


def _check_sizes(name: str, num_classes: int, in_channels: int, input_size: int) -> None:
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"model {name}: {label} is {value!r} (expected a positive integer)")


class LeNet300(nn.Module):
    """LeNet-300-100: flatten -> fc1 (300) -> ReLU -> fc2 (100) -> ReLU -> fc3 (classes).

    Args:
        num_classes: outputs of ``fc3``.
        in_channels: input channels.
        input_size: input height = width in pixels (28 for the MNIST family).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_sizes("lenet300", num_classes, in_channels, input_size)
        self.edl_arch = {
            "name": "lenet300",
            "kwargs": {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size},
        }
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``N x num_classes`` for inputs ``N x C x H x W``."""
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv1 (20, 5x5) -> pool -> conv2 (50, 5x5) -> pool -> fc1 (500) -> ReLU -> fc2.

    Spatial size: ``s -> s - 4 -> (s - 4) // 2 -> that - 4 -> that // 2``; for 28x28
    inputs 28 -> 24 -> 12 -> 8 -> 4, so ``fc1`` sees 50 * 4 * 4 = 800 features.

    Args:
        num_classes: outputs of ``fc2``.
        in_channels: input channels.
        input_size: input height = width in pixels (28 for the MNIST family; at least 16).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_sizes("lenet5", num_classes, in_channels, input_size)
        features_side = ((input_size - 4) // 2 - 4) // 2
        if features_side < 1:
            raise ModelError(f"model lenet5: input_size is {input_size} (expected at least 16 pixels)")
        self.edl_arch = {
            "name": "lenet5",
            "kwargs": {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size},
        }
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * features_side * features_side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``N x num_classes`` for inputs ``N x C x H x W``."""
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
