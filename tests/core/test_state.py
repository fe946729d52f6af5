"""The state a method adds to a weight: parametrizations while training, and a frozen
quantizer's claim that ends by itself when the weight changes."""

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from efficientdl.compress.quantization.fixed_point import fixed_point_spec
from efficientdl.core.parametrize import fold_parametrization, replace_module
from efficientdl.core.state import (LayerQuantizers, QuantSpec, WeightQuantizer, attach_input_quantizer,
                                    freeze_weight_quantizer, input_spec, renew_weight_claims, weight_spec)


def quantized_linear(bits=4):
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    spec = fixed_point_spec(layer.weight.detach(), bits, signed=True)
    parametrize.register_parametrization(layer, "weight", WeightQuantizer(spec), unsafe=True)
    return layer, spec


def on_grid(x, spec):
    step = 2.0 ** -spec.frac_bits[0]
    return torch.equal(torch.round(x / step) * step, x)


def test_freeze_leaves_a_plain_weight_on_the_grid_and_its_claim():
    layer, spec = quantized_linear()
    latent = layer.parametrizations.weight.original.detach().clone()
    assert weight_spec(layer) is spec                   # while fine-tuning: the parametrization
    freeze_weight_quantizer(layer)
    assert not parametrize.is_parametrized(layer) and isinstance(layer.weight, nn.Parameter)
    assert on_grid(layer.weight.detach(), spec) and not on_grid(latent, spec)
    step = 2.0 ** -spec.frac_bits[0]
    assert torch.equal(layer.weight.detach(), torch.clamp(torch.round(latent / step), -8, 7) * step)
    assert weight_spec(layer) is spec                   # the claim


def test_writing_to_the_weight_ends_the_claim():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    with torch.no_grad():
        layer.weight.mul_(1.01)                         # BatchNorm folding does this
    assert weight_spec(layer) is None


def test_replacing_the_weight_ends_the_claim():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    layer.weight = nn.Parameter(layer.weight.detach().clone())
    assert weight_spec(layer) is None


def test_renew_confirms_values_on_the_grid_and_drops_the_others():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    on, off = layer.weight.detach().clone(), layer.weight.detach() + 0.001
    with torch.no_grad():
        layer.weight.copy_(on)                          # a load writes the same values back
    assert weight_spec(layer) is None
    renew_weight_claims(layer)
    assert weight_spec(layer) is spec
    with torch.no_grad():
        layer.weight.copy_(off)
    renew_weight_claims(layer)
    assert weight_spec(layer) is None


def test_a_deep_copy_keeps_a_valid_claim_on_its_own_weight():
    layer, spec = quantized_linear()
    freeze_weight_quantizer(layer)
    twin = copy.deepcopy(layer)
    assert weight_spec(twin) is spec and twin.weight is not layer.weight
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert weight_spec(twin) is spec and weight_spec(layer) is None


def test_fold_removes_a_live_quantizer():
    layer, spec = quantized_linear()
    fold_parametrization(layer, "weight")
    assert weight_spec(layer) is None and not parametrize.is_parametrized(layer)


def test_one_quantizer_object_per_module_quantizes_the_input():
    layer = nn.Linear(2, 2)
    spec = QuantSpec("fixed", 8, -128, 127, [0.5], [0], [1])
    attach_input_quantizer(layer, spec)
    attach_input_quantizer(layer, spec)
    assert sum(isinstance(h, LayerQuantizers) for h in layer._forward_pre_hooks.values()) == 1
    assert input_spec(layer) is spec
    x = torch.tensor([[0.3, -0.8]])                      # → 0.5, -1.0 on a 0.5 grid
    assert torch.allclose(layer(x), nn.functional.linear(torch.tensor([[0.5, -1.0]]), layer.weight, layer.bias))
    LayerQuantizers.detach(layer)
    assert input_spec(layer) is None and torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_replace_module_by_qualified_name():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    replace_module(model, "0.1", nn.Tanh())
    assert isinstance(model[0][1], nn.Tanh)


def test_centroid_gradient_is_the_cluster_sum_and_the_same_on_every_run():
    """∂L/∂c_k = Σ over the weights of cluster k (the paper's rule), bit for bit the same with
    several threads (indexing's own backward is not)."""
    from efficientdl.core.state import SharedWeight

    torch.manual_seed(0)
    indices = torch.randint(0, 16, (300, 784))
    grad = torch.randn(300, 784)
    shared = SharedWeight(torch.randn(15), indices, 4)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2, 2):
            torch.set_num_threads(n)
            shared.centroids.grad = None
            (shared(torch.empty(0)) * grad).sum().backward()
            results.append(shared.centroids.grad.clone())
    finally:
        torch.set_num_threads(threads)
    by_hand = torch.tensor([grad[indices == k].double().sum().item() for k in range(1, 16)], dtype=torch.float64)
    assert torch.allclose(results[0].double(), by_hand, rtol=1e-4, atol=1e-3)
    assert all(torch.equal(r, results[0]) for r in results)
