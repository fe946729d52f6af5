"""ResNet-50 v1.5 against its published parameter count and layout."""

import torch

from efficientdl import models


def test_resnet50_published_parameter_count():
    # torchvision resnet50 / NVIDIA DeepLearningExamples ResNet-50 v1.5: 25,557,032 parameters
    model = models.create("resnet50", num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert model.edl_arch["name"] == "resnet50"


def test_resnet50_v15_stride_on_3x3_and_output_shape():
    model = models.create("resnet50", num_classes=1000, in_channels=3)
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)      # v1.5: the 3×3 strides
    assert isinstance(block.bn1, torch.nn.BatchNorm2d)                        # BN as attributes
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
