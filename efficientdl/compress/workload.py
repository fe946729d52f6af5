"""Describe a model's work for the hardware models (:mod:`efficientdl.hardware`).

Runs one forward pass with hooks on every ``nn.Linear`` and ``nn.Conv2d`` to record
MACs, activation counts and input density, and reads the storage of each weight from
the model (dense) or from a compressed file (sparse index + codebook index bits).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..hardware.workload import LayerWorkload
from .layers import compressible_layers, run_with_layer_hooks


def model_workload(model: nn.Module, example_input: torch.Tensor, weight_bits: float = 32,
                   storage: dict[str, tuple[int, float]] | None = None) -> list[LayerWorkload]:
    """The per-layer workload of ``model`` on one sample.

    Args:
        model: any ``nn.Module``; its ``Linear`` and ``Conv2d`` layers are described.
        example_input: a batch of one sample (its activations set the input densities).
        weight_bits: bits per weight of dense storage (32 for fp32).
        storage: optional ``{layer name: (stored nonzero weights, bits per stored weight)}``
            overriding dense storage (a compressed file's layers).

    Returns:
        One :class:`LayerWorkload` per layer, in execution order.  MACs per sample:
        ``in × out`` for fc; ``C_out · C_in/groups · kh · kw · H_out · W_out`` for conv.
    """
    records: list[LayerWorkload] = []
    storage = storage or {}
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, output) -> None:
            x = inputs[0]
            weights = module.weight.numel()
            if isinstance(module, nn.Conv2d):
                macs = weights * output.shape[-1] * output.shape[-2]
                kind = "conv"
            else:
                macs = weights
                kind = "fc"
            nonzero, bits = storage.get(name, (weights, weight_bits))
            density = float((x != 0).float().mean()) if x.numel() else 1.0
            records.append(LayerWorkload(name, kind, int(macs), int(weights), int(nonzero), float(bits),
                                         int(x[0].numel()), int(output[0].numel()), input_density=density))
        return fn

    for name, module in compressible_layers(model):
        hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return records


def file_workload(path: str | os.PathLike, example_input: torch.Tensor,
                  model: nn.Module | str | None = None, **load_options: Any) -> list[LayerWorkload]:
    """The workload of a compressed file's model, with its compressed weight storage.

    ``model`` and ``load_options`` (``model_kwargs``, ``trust_model_code``) say which network
    to load the file into, as for :func:`efficientdl.format.load`.

    Bits per stored weight of a sparse or shared layer are ``(value bits + index bits) ×
    entries / nonzero`` — what a sparse engine such as EIE reads (fixed-width fields,
    fillers included; Huffman coding is for storage and transfer only).
    """
    from .. import format as fmt

    c = fmt.read(path)
    model = fmt.load(c, model=model, **load_options)
    storage = {}
    for layer in c.layers:
        module, _, attr = layer.name.rpartition(".")
        if attr == "weight" and layer.kind in ("sparse", "shared") and layer.nonzero:
            bits = (layer.weight_bits + (layer.index_bits or 0)) * layer.entries / layer.nonzero
            storage[module] = (layer.nonzero, bits)
    return model_workload(model, example_input, storage=storage)


def shared_fc_layers(path: str | os.PathLike, example_input: torch.Tensor,
                     model: nn.Module | str | None = None, **load_options: Any) -> list[dict]:
    """The weight-shared fully connected layers of a compressed file, with their inputs
    (``model`` and ``load_options`` as for :func:`file_workload`).

    For EIE-style simulation: each entry has ``name``, ``codes`` (``(out, in)`` cluster
    indices, 0 = pruned), ``codebook``, ``bias`` and ``activations`` (the layer's input
    on ``example_input``, one sample).

    Returns:
        ``(layers, skipped)``: the layers, and the names of compressible layers left out
        (convolutions, layers without weight sharing).
    """
    from .. import format as fmt

    c = fmt.read(path)
    model = fmt.load(c, model=model, **load_options)
    inputs: dict[str, torch.Tensor] = {}
    run_with_layer_hooks(model, example_input,
                         lambda name, m, i, o: inputs.__setitem__(name, i[0][0].detach().flatten()))
    layers, skipped = [], []
    for name, module in compressible_layers(model):
        key = f"{name}.weight"
        if not isinstance(module, nn.Linear) or key not in c.codebooks or name not in inputs:
            skipped.append(name)
            continue
        codes, codebook = c.codebooks[key]
        bias = module.bias.detach().numpy().astype("float64") if module.bias is not None else None
        layers.append({"name": name, "codes": codes, "codebook": codebook, "bias": bias,
                       "activations": inputs[name].numpy().astype("float64")})
    return layers, skipped
