"""Linear quantization of weights and activations: dynamic fixed point and int8 affine.

* **Dynamic fixed point** (Qiu et al., "Going Deeper with Embedded FPGA Platform for
  Convolutional Neural Network", FPGA'16).  A value is a ``b``-bit two's-complement
  integer ``q`` with a per-layer radix point ``fl`` (fractional length):

      x̂ = q · 2^(−fl),    q = clamp(round(x · 2^fl), −2^(b−1), 2^(b−1) − 1).

  Each layer's weights get their own ``fl`` and each layer's input activations their own,
  chosen on calibration data as the paper does, by minimising the quantization error
  ``fl = argmin Σ |x − x̂(fl)|`` over candidate radix points (from the one that just fits
  ``max|x|`` to ones that saturate outliers).  Activations that are never negative (after
  a ReLU) use the unsigned range ``[0, 2^b − 1]`` — one more bit of precision.
* **Affine (integer) post-training quantization**, the scheme of today's int8 runtimes:
  ``x̂ = (q − z) · s`` with ``q ∈ [q_min, q_max]``; weights symmetric (``z = 0``,
  ``s = max|w| / (2^(b−1) − 1)``), per tensor or per output channel; activations
  asymmetric over ``[0, 2^b − 1]`` with ``s = (max − min) / (2^b − 1)`` and
  ``z = −round(min / s)`` from the calibration minimum and maximum (0 always
  representable exactly).

During fine-tuning the weight quantizer is a ``torch.nn.utils.parametrize``
parametrization (the latent fp32 weight trains; the forward pass sees ``x̂``) and the
activation quantizer a forward pre-hook on the layer; both pass gradients straight
through inside the representable range and block them where the value saturates.
:func:`freeze` then folds the quantized values into the weights; each layer's
:class:`~efficientdl.core.state.LayerQuantizers` keeps its specs (the weight's as a claim
that ends when the weight changes, the input's as a pre-hook), which is what the
compressed file stores: integer codes with their radix points or scales.
The change is recorded in ``model.edl_arch["transforms"]`` so a loaded file quantizes
activations again.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.state import (MAX_BITS, MIN_BITS, SCHEMES, LayerQuantizers, QuantSpec, WeightQuantizer,
                           attach_input_quantizer, dequantize, fake_quantize, freeze_weight_quantizer,
                           input_spec, integer_codes, integer_ranges, weight_spec)
from ...errors import RecipeError
from ..transforms import record_transform, register_transform
from ..layers import check_spec_keys, compressible_tensors, layer_setting, retie, tied_pairs

__all__ = ["MAX_BITS", "MIN_BITS", "SCHEMES", "LayerQuantizers", "QuantSpec", "WeightQuantizer",
           "affine_activation_spec", "affine_weight_spec", "attach_input_quantizer", "calibrate", "dequantize",
           "fake_quantize", "fixed_point_spec", "freeze", "input_spec", "integer_codes", "integer_ranges",
           "integer_weights", "quantize_linear", "weight_spec"]

# --------------------------------------------------------------------------- choosing the parameters
def fixed_point_spec(x: torch.Tensor, bits: int, signed: bool | None = None, search: int = 4,
                     peak: float | None = None) -> QuantSpec:
    """Dynamic fixed point for the values ``x``: the radix point with the smallest L1 error.

    With ``m = max|x|``, ``fl₀ = b − 1 − ⌈log₂ m⌉`` (signed) or ``b − ⌈log₂ m⌉``
    (unsigned) is about the radix point at which ``m`` stops fitting; the candidates
    ``fl₀ − 1 … fl₀ + search`` are tried (the coarser one keeps a peak at a power of
    two exact; larger ``fl`` is finer but saturates the largest values), and the one
    minimising ``Σ |x − x̂|`` is kept, the finer on a tie (Qiu et al., FPGA'16, §6).

    Args:
        x: sample values (weights, or activations seen on calibration data).
        bits: integer width.
        signed: use the signed range (default: when ``x`` has a negative value).
        search: how many finer radix points to try beyond ``fl₀``.
        peak: ``max|x|`` of all the values when ``x`` is only a sample of them.

    Returns:
        A per-tensor ``"fixed"`` :class:`QuantSpec`.
    """
    _check_bits(bits)
    x = x.detach().float().flatten()
    signed = bool((x < 0).any()) if signed is None else signed
    qmin, qmax = integer_ranges(bits)[0 if signed else 1]
    if peak is None:
        peak = float(x.abs().max()) if x.numel() else 0.0
    fl0 = (bits - 1 if signed else bits) - (math.ceil(math.log2(peak)) if peak > 0 else 0)
    best = None
    for fl in range(fl0 + search, fl0 - 2, -1):          # finest first: a tie keeps the finer grid
        spec = QuantSpec("fixed", bits, qmin, qmax, [2.0 ** -fl], [0], [fl])
        error = float((fake_quantize(x, spec) - x).abs().sum())
        if best is None or error < best[0]:
            best = (error, spec)
    return best[1]


def affine_weight_spec(w: torch.Tensor, bits: int, per_channel: bool = True) -> QuantSpec:
    """Symmetric affine quantization of a weight: ``s = max|w| / (2^(b−1) − 1)``, ``z = 0``.

    Args:
        w: the weight (output channels first).
        bits: integer width.
        per_channel: one scale per output channel (axis 0) instead of one per tensor.

    Returns:
        An ``"affine"`` :class:`QuantSpec` over the signed range.
    """
    _check_bits(bits)
    w = w.detach().float()
    peak = w.abs().flatten(1).amax(1) if per_channel and w.dim() > 1 else w.abs().max().reshape(1)
    scale = (peak / ((1 << (bits - 1)) - 1)).clamp_min(torch.finfo(torch.float32).tiny)
    qmin, qmax = integer_ranges(bits)[0]
    return QuantSpec("affine", bits, qmin, qmax, scale.tolist(), [0] * scale.numel(),
                     axis=0 if per_channel and w.dim() > 1 else None)


def affine_activation_spec(lo: float, hi: float, bits: int) -> QuantSpec:
    """Asymmetric affine quantization of activations in ``[lo, hi]`` (0 included) over ``[0, 2^b − 1]``.

    ``s = (hi − lo) / (2^b − 1)`` and ``z = clamp(−round(lo / s), 0, 2^b − 1)``, so that
    the real 0 (ReLU outputs, padding) is represented exactly.
    """
    _check_bits(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = integer_ranges(bits)[1]
    scale = float(torch.tensor(max((hi - lo) / qmax, torch.finfo(torch.float32).tiny), dtype=torch.float32))
    zero_point = int(min(max(-round(lo / scale), qmin), qmax))
    return QuantSpec("affine", bits, qmin, qmax, [scale], [zero_point])


def _check_bits(bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise RecipeError(f"quantization bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


# --------------------------------------------------------------------------- calibration
class _Observer:
    """Forward pre-hook recording the minimum, maximum and a sample of a layer's inputs."""

    def __init__(self, sample_per_batch: int, generator: torch.Generator) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []
        self.sample_per_batch, self.generator = sample_per_batch, generator

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not args[0].is_floating_point():   # token indices (Embedding) are not quantized
            return
        x = args[0].detach().float().flatten()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if x.numel() > self.sample_per_batch:
            x = x[torch.randint(x.numel(), (self.sample_per_batch,), generator=self.generator, device="cpu").to(x.device)]
        self.samples.append(x.cpu())


def calibrate(model: nn.Module, batches: Iterable, layers: list[str], num_batches: int = 16,
              sample_per_batch: int = 65536) -> dict[str, _Observer]:
    """Run ``model`` on calibration batches and observe the inputs of ``layers``.

    Args:
        model: the network (evaluated in eval mode, without gradients).
        batches: an iterable of input tensors or ``(inputs, targets)`` pairs.
        layers: names of the layers whose inputs are observed.
        num_batches: how many batches to use.
        sample_per_batch: values kept per batch and layer for the radix-point search.

    Returns:
        One observer per layer, with ``lo``, ``hi`` and ``samples``.
    """
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)
    observers = {name: _Observer(sample_per_batch, generator) for name in layers}
    handles = [modules[name].register_forward_pre_hook(obs) for name, obs in observers.items()]
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if seen >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise RecipeError("calibration: the data gave no batches")
    return observers


# --------------------------------------------------------------------------- the method
def quantize_linear(model: nn.Module, calibration: Iterable | None, scheme: str = "fixed",
                    weight_bits: Any = 8, activation_bits: Any = 8, per_channel: bool = True,
                    num_batches: int = 16) -> dict[str, dict]:
    """Quantize the weights (and inputs) of every layer with a ``weight`` matrix, in place.

    Covers ``Linear``, every convolution and ``Embedding`` (whose integer inputs are left
    alone); tensors that are not a layer's ``weight`` (recurrent gate matrices, custom
    parameters) stay fp32.

    Weights get a :class:`WeightQuantizer` parametrization (fine-tune the model now if
    you like: the forward pass is quantized, the gradient straight-through), inputs a
    pre-hook quantizer chosen on calibration data.  Call :func:`freeze` afterwards.

    Args:
        model: any ``nn.Module``.
        calibration: batches for the activation ranges (needed when activations are quantized).
        scheme: ``"fixed"`` (dynamic fixed point, Qiu et al.) or ``"affine"`` (int8-style).
        weight_bits: bits per weight (one number or a per-layer mapping; None keeps a layer fp32).
        activation_bits: bits per input activation (as above; None keeps inputs fp32).
        per_channel: for ``"affine"``, one weight scale per output channel.
        num_batches: calibration batches.

    Returns:
        ``{layer: {"weight": spec dict or None, "input": spec dict or None}}``.

    Raises:
        RecipeError: unknown scheme, bits out of range, or no calibration data.
    """
    if scheme not in SCHEMES:
        raise RecipeError(f"quantization scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    check_spec_keys(weight_bits, model, "weight bits")
    check_spec_keys(activation_bits, model, "activation bits")
    plan = {}
    ties = tied_pairs(model)
    for t in list(compressible_tensors(model)):
        if t.attr != "weight":      # a layer's own `weight`: Linear, any convolution, Embedding, …
            continue
        name, module = t.module_name, t.module
        wb, ab = (layer_setting(weight_bits, name, module, "weight_bits"),
                  layer_setting(activation_bits, name, module, "activation_bits"))
        for b in (wb, ab):
            if b is not None:
                _check_bits(b)
        if wb is not None or ab is not None:
            plan[name] = (module, wb, ab)
    needs_data = [name for name, (_, _, ab) in plan.items() if ab is not None]
    if needs_data and calibration is None:
        raise RecipeError("quantizing activations needs calibration data")
    observers = calibrate(model, calibration, needs_data, num_batches) if needs_data else {}
    report = {}
    for name, (module, wb, ab) in plan.items():
        entry: dict[str, Any] = {"weight": None, "input": None}
        if wb is not None:
            w = module.weight.detach()
            spec = fixed_point_spec(w, wb, signed=True) if scheme == "fixed" else affine_weight_spec(w, wb, per_channel)
            parametrize.register_parametrization(module, "weight", WeightQuantizer(spec), unsafe=True)
            entry["weight"] = spec.to_json()
        if ab is not None and not observers[name].samples:
            # the layer's forward never ran (its weight is used by a parent, as
            # MultiheadAttention does with out_proj): its inputs stay fp32
            entry["input_note"] = "not called during calibration; inputs left fp32"
        elif ab is not None:
            obs = observers[name]
            spec = (fixed_point_spec(torch.cat(obs.samples), ab, signed=obs.lo < 0,
                                     peak=max(abs(obs.lo), abs(obs.hi))) if scheme == "fixed"
                    else affine_activation_spec(obs.lo, obs.hi, ab))
            attach_input_quantizer(module, spec)
            entry["input"] = spec.to_json()
        report[name] = entry
    retie(ties)
    return report


def freeze(model: nn.Module) -> nn.Module:
    """Fold the weight quantizers into integer-valued weights and record the model's quantizers.

    Each quantized layer's weight becomes a plain parameter holding ``x̂`` exactly; its
    :class:`LayerQuantizers` keeps the spec as a claim on that tensor (the compressed file
    stores the integer codes with it) and quantizes the layer's input.  The specs are
    recorded as the ``linear_quant`` transform of ``model.edl_arch``.

    Returns:
        ``model``, changed in place.
    """
    layers = {}
    ties = tied_pairs(model)
    for t in list(compressible_tensors(model)):
        if t.attr != "weight":
            continue
        name, module = t.module_name, t.module
        spec = freeze_weight_quantizer(module)
        inp = input_spec(module)
        if spec is not None or inp is not None:
            layers[name] = {"weight": spec.to_json() if spec else None, "input": inp.to_json() if inp else None}
    arch = getattr(model, "edl_arch", None)
    if isinstance(arch, dict):  # one record of the quantizers, replacing an earlier one
        arch["transforms"] = [t for t in arch.get("transforms", []) if t.get("op") != "linear_quant"]
    retie(ties)
    if layers:
        record_transform(model, "linear_quant", layers=layers)
    return model


@register_transform("linear_quant")
def _replay_linear_quant(model: nn.Module, layers: dict) -> None:
    """Put the recorded quantizers back on a rebuilt model (weights come from the file)."""
    modules = dict(model.named_modules())
    recorded = {}
    for name, entry in layers.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            raise ValueError(f"'{name}' is not a layer of the model")
        weight = inp = None
        if entry.get("weight") is not None:   # confirmed once the file's weights are loaded
            weight = QuantSpec.from_json(entry["weight"], module.weight.shape[0], name)
            LayerQuantizers.on(module).claim("weight", module.weight, weight, verified=False)
        if entry.get("input") is not None:
            inp = QuantSpec.from_json(entry["input"], None, name)
            attach_input_quantizer(module, inp)
        recorded[name] = {"weight": weight.to_json() if weight else None, "input": inp.to_json() if inp else None}
    arch = getattr(model, "edl_arch", None)
    if isinstance(arch, dict):
        arch["transforms"] = [t for t in arch.get("transforms", []) if t.get("op") != "linear_quant"]
    record_transform(model, "linear_quant", layers=recorded)


def integer_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, QuantSpec]]:
    """The true integer tensors of a quantized model: ``{layer: (codes, spec)}``.

    Codes are ``int8`` when they fit, else ``int16`` (or ``int32`` for unsigned 16-bit);
    ``(codes − z) · s`` gives the weight back exactly.
    """
    out = {}
    for t in list(compressible_tensors(model)):
        name, module = t.module_name, t.module
        spec = weight_spec(module) if t.attr == "weight" else None
        if spec is not None:
            q = integer_codes(module.weight.detach(), spec)
            dtype = next(d for d in (torch.int8, torch.int16, torch.int32)
                         if torch.iinfo(d).min <= spec.qmin and spec.qmax <= torch.iinfo(d).max)
            out[name] = (q.to(dtype), spec)
    return out
