"""The quantizer registry applies the same methods as their own functions, with declared options."""

import copy

import pytest
import torch
from torch import nn

from efficientdl.compress.quantization import QUANTIZERS, freeze, quantize, quantize_linear, share, ternarize
from efficientdl.errors import RecipeError


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def batches():
    torch.manual_seed(1)
    return [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long)) for _ in range(3)]


def outputs(model):
    with torch.no_grad():
        return model.eval()(torch.linspace(-1, 1, 16).reshape(2, 8))


def test_names():
    assert QUANTIZERS.names() == ["kmeans", "fixed-point", "int8", "ttq", "twn", "binary"]


def test_int8_through_the_registry_equals_the_function():
    a, b = mlp(), mlp()
    quantize(a, "int8", calibration=batches())
    quantize_linear(b, batches(), scheme="affine", weight_bits=8, activation_bits=8)
    freeze(b)
    assert torch.equal(outputs(a), outputs(b))


def test_kmeans_and_ternary_through_the_registry_equal_the_functions():
    a, b = mlp(), mlp()
    quantize(a, "kmeans", bits=3)
    share(b, bits=3)
    assert torch.equal(outputs(a), outputs(b))
    c, d = mlp(), mlp()
    quantize(c, "twn")
    ternarize(d, "twn")
    assert torch.equal(outputs(c), outputs(d))


def test_declared_ranges_refuse_before_anything_changes():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RecipeError, match=r"bits: expected an integer in \[1, 16\]"):
        quantize(model, "kmeans", bits=17)
    with pytest.raises(RecipeError, match="unknown quantizer 'int4'"):
        quantize(model, "int4")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
