"""The state a method adds to a weight is a parametrization: fold it and it is gone."""

import copy

import torch
from torch import nn

from efficientdl.compress.quantization.fixed_point import fixed_point_spec
from efficientdl.core.parametrize import fold_parametrization, replace_module
from efficientdl.core.state import (InputQuantizer, QuantSpec, WeightQuantizer, attach_input_quantizer,
                                    freeze_weight_quantizer, input_spec, weight_spec)
from torch.nn.utils import parametrize


def quantized_linear(bits=4):
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    spec = fixed_point_spec(layer.weight.detach(), bits, signed=True)
    parametrize.register_parametrization(layer, "weight", WeightQuantizer(spec), unsafe=True)
    return layer, spec


def on_grid(x, spec):
    step = spec.scale[0]
    return torch.equal(torch.round(x / step) * step, x)


def test_frozen_weight_is_on_the_grid_and_returned_unchanged():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    stored = layer.parametrizations.weight.original
    assert on_grid(stored.detach(), spec)
    with torch.no_grad():
        first = layer.weight
        assert first is stored                     # no work per call once frozen
        assert torch.equal(layer(torch.ones(1, 6)), torch.ones(1, 6) @ stored.T + layer.bias)


def test_training_after_freeze_stays_on_the_grid():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(0.0123)   # moves off the grid
        assert on_grid(layer.weight, spec) and layer.weight is not layer.parametrizations.weight.original
    assert on_grid(layer.weight.detach(), spec)           # with gradients too (straight-through)


def test_a_deep_copy_is_checked_once_and_then_free():
    layer, _ = quantized_linear()
    freeze_weight_quantizer(layer)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight
        assert twin.weight is twin.parametrizations.weight.original


def test_fold_removes_the_quantizer_with_its_claim():
    layer, spec = quantized_linear()
    assert weight_spec(layer) is spec
    fold_parametrization(layer, "weight")
    assert weight_spec(layer) is None and not parametrize.is_parametrized(layer)


def test_one_input_quantizer_per_module():
    layer = nn.Linear(2, 2)
    spec = QuantSpec("fixed", 8, -128, 127, [0.5], [0], [1])
    attach_input_quantizer(layer, spec)
    attach_input_quantizer(layer, spec)
    assert sum(isinstance(h, InputQuantizer) for h in layer._forward_pre_hooks.values()) == 1
    assert input_spec(layer) is spec
    x = torch.tensor([[0.3, -0.8]])                      # → 0.5, -1.0 on a 0.5 grid
    assert torch.allclose(layer(x), nn.functional.linear(torch.tensor([[0.5, -1.0]]), layer.weight, layer.bias))
    InputQuantizer.detach(layer)
    assert input_spec(layer) is None


def test_replace_module_by_qualified_name():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    replace_module(model, "0.1", nn.Tanh())
    assert isinstance(model[0][1], nn.Tanh)
