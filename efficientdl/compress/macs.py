"""Multiply-accumulates (MACs) per sample of convolutions, fully connected layers and
tensor-train layers, the cost figure the low-rank methods report.

One MAC is one multiplication and one addition; FLOPs ≈ 2 × MACs.  Biases are not counted.

* ``nn.Linear(in, out)``: ``in · out``.
* ``nn.Conv2d``: ``N · (C / groups) · k_h · k_w · H_out · W_out`` with
  ``H_out = ⌊(H + 2 p_h − d_h (k_h − 1) − 1) / s_h⌋ + 1`` (likewise ``W_out``).
* :class:`efficientdl.nn.TTLinear`: its own :meth:`~efficientdl.nn.TTLinear.macs`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import RecipeError
from ..nn.tensor_train import TTLinear


def conv2d_output_hw(conv: nn.Conv2d, input_hw: Sequence[int]) -> tuple[int, int]:
    """The spatial size of ``conv``'s output for an ``H × W`` input.

    Args:
        conv: the convolution (integer, ``"valid"`` or ``"same"`` padding).
        input_hw: ``(H, W)`` in pixels.

    Returns:
        ``(H_out, W_out)`` in pixels.

    Raises:
        RecipeError: the input is smaller than the (dilated) kernel.
    """
    if conv.padding == "same":
        return int(input_hw[0]), int(input_hw[1])
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    out = tuple((int(size) + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                zip(input_hw, padding, conv.dilation, conv.kernel_size, conv.stride))
    if min(out) < 1:
        raise RecipeError(f"an input of {tuple(input_hw)} pixels is smaller than the kernel {conv.kernel_size}")
    return out


def conv2d_macs(conv: nn.Conv2d, input_hw: Sequence[int]) -> int:
    """MACs of one ``conv`` application to an ``H × W`` input (see the module docstring).

    Args:
        conv: the convolution.
        input_hw: ``(H, W)`` in pixels.

    Returns:
        ``weights · H_out · W_out`` (weights = ``N · C/groups · k_h · k_w``).
    """
    h_out, w_out = conv2d_output_hw(conv, input_hw)
    return conv.weight.numel() * h_out * w_out


def sequential_conv_macs(layers: nn.Module, input_hw: Sequence[int]) -> int:
    """MACs of a convolution or a ``nn.Sequential`` of convolutions applied in turn.

    Args:
        layers: one ``nn.Conv2d`` or a ``nn.Sequential`` of them.
        input_hw: ``(H, W)`` of the first layer's input in pixels.

    Returns:
        The sum of the layers' MACs, each at the spatial size the previous one produced.
    """
    total, hw = 0, tuple(input_hw)
    for conv in (layers if isinstance(layers, nn.Sequential) else [layers]):
        total += conv2d_macs(conv, hw)
        hw = conv2d_output_hw(conv, hw)
    return total


def layer_io_shapes(model: nn.Module, input_shape: Sequence[int],
                    layers: Iterable[tuple[str, nn.Module]]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shapes of some layers of ``model`` on one zero sample.

    Args:
        model: any ``nn.Module`` (its training mode is restored afterwards).
        input_shape: one sample's shape without the batch dimension, e.g. ``(1, 28, 28)``.
        layers: ``(name, module)`` pairs of submodules to observe.

    Returns:
        ``{name: (input shape, output shape)}`` of each layer's first call, batch of 1 included,
        in execution order.
    """
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return shapes


def model_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per sample of every ``Conv2d``, ``Linear`` and ``TTLinear`` of ``model``.

    Args:
        model: any ``nn.Module``.
        input_shape: one sample's shape without the batch dimension, e.g. ``(1, 28, 28)``.

    Returns:
        ``{layer name: MACs}`` in execution order (sum the values for the model's total).
    """
    modules = dict(model.named_modules())
    shapes = layer_io_shapes(model, input_shape, [(n, m) for n, m in modules.items()
                                                  if isinstance(m, (nn.Conv2d, nn.Linear, TTLinear))])
    counts = {}
    for name, (_, out_shape) in shapes.items():
        module = modules[name]
        if isinstance(module, TTLinear):
            counts[name] = module.macs()
        elif isinstance(module, nn.Conv2d):
            counts[name] = module.weight.numel() * out_shape[-2] * out_shape[-1]
        else:
            counts[name] = module.weight.numel()
    return counts
