"""Model registry and the LeNet architectures of the Deep Compression papers."""

import pytest
import torch
from torch import nn

from efficientdl.errors import ModelError
from efficientdl.models import available, create, register


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet300_parameter_count():
    # 784*300+300 + 300*100+100 + 100*10+10 (Han et al., LeNet-300-100: 267K)
    assert count_parameters(create("lenet300")) == 235_500 + 30_100 + 1_010 == 266_610


def test_lenet5_parameter_count():
    # conv1 1*20*25+20, conv2 20*50*25+50, fc1 800*500+500, fc2 500*10+10 (Han et al.: 431K)
    model = create("lenet5")
    assert count_parameters(model.conv1) == 520
    assert count_parameters(model.conv2) == 25_050
    assert count_parameters(model.fc1) == 400_500
    assert count_parameters(model.fc2) == 5_010
    assert count_parameters(model) == 431_080


def test_layer_shapes():
    lenet300 = create("lenet300")
    assert [tuple(layer.weight.shape) for layer in (lenet300.fc1, lenet300.fc2, lenet300.fc3)] == [
        (300, 784), (100, 300), (10, 100)
    ]
    lenet5 = create("lenet5")
    assert tuple(lenet5.conv1.weight.shape) == (20, 1, 5, 5)
    assert tuple(lenet5.conv2.weight.shape) == (50, 20, 5, 5)
    assert tuple(lenet5.fc1.weight.shape) == (500, 800)
    assert tuple(lenet5.fc2.weight.shape) == (10, 500)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_output_shape(name):
    model = create(name, num_classes=7, in_channels=3)
    assert model(torch.randn(4, 3, 28, 28)).shape == (4, 7)


def test_lenet300_computes_the_three_layer_perceptron():
    model = create("lenet300")
    x = torch.randn(2, 1, 28, 28)
    flat = x.reshape(2, 784)
    hidden1 = torch.clamp(flat @ model.fc1.weight.T + model.fc1.bias, min=0)
    hidden2 = torch.clamp(hidden1 @ model.fc2.weight.T + model.fc2.bias, min=0)
    expected = hidden2 @ model.fc3.weight.T + model.fc3.bias
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_edl_arch_rebuilds_the_model():
    model = create("lenet5", num_classes=5)
    assert model.edl_arch["name"] == "lenet5"
    rebuilt = create(model.edl_arch["name"], **model.edl_arch["kwargs"])
    assert rebuilt.fc2.out_features == 5
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_available_lists_both():
    assert {"lenet300", "lenet5"} <= set(available())


def test_unknown_name_lists_the_names():
    with pytest.raises(ModelError, match=r"'vgg'.*lenet300.*lenet5"):
        create("vgg")


def test_bad_arguments_are_model_errors():
    with pytest.raises(ModelError, match="num_classes"):
        create("lenet300", num_classes=0)
    with pytest.raises(ModelError, match="lenet5"):
        create("lenet5", input_size=8)
    with pytest.raises(ModelError, match="lenet300"):
        create("lenet300", depth=3)


def test_register_decorator():
    @register("test-tiny-linear")
    class Tiny(nn.Module):
        def __init__(self, num_classes=10, in_channels=1):
            super().__init__()
            self.fc = nn.Linear(in_channels * 4, num_classes)

    try:
        model = create("test-tiny-linear", num_classes=3, in_channels=2)
        assert model.fc.weight.shape == (3, 8)
        assert model.edl_arch == {"name": "test-tiny-linear", "kwargs": {"num_classes": 3, "in_channels": 2}}
        assert "test-tiny-linear" in available()
        with pytest.raises(ValueError):
            register("test-tiny-linear")(nn.Linear)
    finally:
        import efficientdl.models as models

        models._REGISTRY.pop("test-tiny-linear", None)
