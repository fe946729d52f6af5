"""The state a compression method adds to a weight, as ``torch.nn.utils.parametrize``
parametrizations, and the one small class that owns activation quantizers.

Every method leaves its result on the model itself, on the tensor it changed:

* pruning (Han et al., NIPS'15): :class:`WeightMask`, ``W ↦ W ⊙ M``;
* weight sharing (Han et al., ICLR'16): :class:`SharedWeight`, ``W = C[I]``;
* linear quantization (dynamic fixed point, Qiu et al. FPGA'16; int8 affine, Jacob et
  al. CVPR'18): :class:`WeightQuantizer`, ``W ↦ x̂ = (clamp(round(W/s) + z) − z) · s``,
  while fine-tuning; once frozen, the plain weight ``x̂`` and :class:`LayerQuantizers`,
  which quantizes the layer's input (a forward pre-hook) and keeps the weight's grid as
  a claim that ends by itself when the weight changes.

Because they are parametrizations, autograd trains through them (the centroid
gradient of weight sharing, the straight-through gradient of quantizers), one fold
(:func:`efficientdl.core.parametrize.fold_parametrization`) removes any of them, and a
method that changes a tensor's values folds first — and a frozen quantizer's claim
ends when its tensor is replaced or written to, so no state can outlive the values it
describes.  The file format reads the same objects
(:func:`weight_mask`, :func:`shared_weight`, :func:`weight_spec`, :func:`input_spec`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .parametrize import fold_parametrization
from .quantspec import MAX_BITS, MIN_BITS, SCHEMES, QuantSpec, integer_ranges  # noqa: F401  (re-exported)



# --------------------------------------------------------------------------- pruning
class WeightMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ M`` with a fixed boolean mask ``M`` (a buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def weight_mask(module: nn.Module, attr: str = "weight") -> torch.Tensor | None:
    """The boolean mask of a pruned tensor (``module.<attr>``), or ``None`` when it is not pruned."""
    if parametrize.is_parametrized(module, attr):
        for p in module.parametrizations[attr]:
            if isinstance(p, WeightMask):
                return p.mask
    return None



# --------------------------------------------------------------------------- weight sharing
class _CodebookGather(torch.autograd.Function):
    """``W = C[I]`` whose backward is the paper's centroid gradient, ``∂L/∂c_k = Σ_{i: I_i = k} ∂L/∂W_i``,
    summed by ``bincount`` in one deterministic order (indexing's own backward accumulates
    with several threads in an order that changes from run to run)."""

    @staticmethod
    def forward(ctx, codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:  # noqa: D401 - autograd API
        ctx.save_for_backward(indices)
        ctx.size = codebook.numel()
        return codebook[indices]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D401 - autograd API
        (indices,) = ctx.saved_tensors
        sums = torch.bincount(indices.reshape(-1), weights=grad.reshape(-1), minlength=ctx.size)
        return sums.to(grad.dtype), None


class SharedWeight(nn.Module):
    """Parametrization ``W = C[I]`` with codebook ``C = (0, centroids)`` and fixed indices ``I``.

    Attributes:
        centroids: trainable ``nn.Parameter`` of the ``2^b − 1`` shared values.
        indices: int64 buffer of the weight's shape; 0 means a pruned (zero) weight.
        bits: bits per index ``b``.
    """

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.centroids = nn.Parameter(centroids.to(torch.float32).clone())
        self.register_buffer("indices", indices.to(torch.int64))

    def codebook(self) -> torch.Tensor:
        """The full codebook ``(0, c_1, …, c_K)`` (differentiable in the centroids)."""
        return torch.cat([self.centroids.new_zeros(1), self.centroids])

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # stored weight is unused
        return _CodebookGather.apply(self.codebook(), self.indices)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


def shared_weight(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` parametrization of ``module.<attr>``, if it has one."""
    if parametrize.is_parametrized(module, attr):
        for p in module.parametrizations[attr]:
            if isinstance(p, SharedWeight):
                return p
    return None



def apply_shared_weight(module: nn.Module, attr: str, centroids: torch.Tensor, indices: torch.Tensor,
                        bits: int) -> SharedWeight:
    """Make ``module.<attr>`` the weight-shared ``C[I]``: register a :class:`SharedWeight` with
    these centroids and indices and freeze the stored tensor (only the centroids train).

    The one place a codebook is put on a tensor: by weight sharing, and again when a
    stage checkpoint is resumed.

    Returns:
        The registered :class:`SharedWeight`.
    """
    shared = SharedWeight(centroids, indices.reshape(getattr(module, attr).shape), bits)
    parametrize.register_parametrization(module, attr, shared, unsafe=True)
    module.parametrizations[attr].original.requires_grad_(False)
    return shared


# --------------------------------------------------------------------------- linear quantization
class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):  # noqa: D401 - autograd API
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, g):  # noqa: D401 - autograd API
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x̂ = (clamp(round(x / s) + z, q_min, q_max) − z) · s`` with a straight-through gradient.

    The gradient is passed unchanged where ``round(x / s) + z`` lies in ``[q_min, q_max]``
    and is zero where the value saturates.  Rounding is to nearest, ties to even.

    Args:
        x: any float tensor (for a per-channel spec, channels along ``spec.axis``).
        spec: the quantizer.

    Returns:
        The quantized values, in ``x``'s dtype.
    """
    s, z = spec.tensors(x)
    return _FakeQuant.apply(x, s, z, float(spec.qmin), float(spec.qmax))


def integer_codes(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The integers ``q = clamp(round(x / s) + z, q_min, q_max)`` as an ``int32`` tensor.

    Applied to an already quantized tensor it returns its codes exactly
    (``(q − z) · s / s`` rounds back to ``q − z`` for ``|q| < 2^16``).
    """
    s, z = spec.tensors(x.float())
    return (torch.round(x.float() / s) + z).clamp(spec.qmin, spec.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``(q − z) · s`` in float32, the same arithmetic as :func:`fake_quantize`."""
    s, z = spec.tensors(q.float())
    return (q.float() - z) * s



def _parametrization(module: nn.Module, attr: str, kind: type) -> Any:
    """The parametrization of type ``kind`` on ``module.<attr>``, or ``None``."""
    if parametrize.is_parametrized(module, attr):
        for p in module.parametrizations[attr]:
            if isinstance(p, kind):
                return p
    return None


class WeightQuantizer(nn.Module):
    """Parametrization ``W ↦ fake_quantize(W, spec)`` while fine-tuning with the quantizer
    in the loop: the latent fp32 weight trains, the forward pass sees ``x̂`` (straight-
    through gradient).  :func:`freeze_weight_quantizer` folds it into ``x̂``.

    Attributes:
        spec: the :class:`QuantSpec` of the weight.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.spec)


def only_weight_quantizers(module: nn.Module) -> bool:
    """Whether every parametrization of ``module`` (if any) is a :class:`WeightQuantizer`:
    its tensors then hold their values plainly, and a method may fold them."""
    return not parametrize.is_parametrized(module) or all(
        isinstance(p, WeightQuantizer) for name in module.parametrizations.keys() for p in module.parametrizations[name])


def on_grid(values: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether ``values`` are exactly points of ``spec``'s grid (their integer codes give them back)."""
    t = values.detach().cpu().float()
    return bool(torch.equal(dequantize(integer_codes(t, spec), spec), t))


class LayerQuantizers:
    """The quantizers of one frozen layer: the one small class that owns them.

    * The input quantizer: as a forward pre-hook it replaces the layer's input ``x`` by
      ``fake_quantize(x, input)`` (integer inputs, an embedding's token indices, pass).
    * The weight's grid: after :func:`freeze_weight_quantizer` the weight is a plain
      parameter holding ``x̂`` (nothing to compute per call), and this object keeps the
      claim ``(spec, tensor, version)``.  The claim holds only while the tensor is the
      same object with the same version counter: a method that replaces the weight or
      writes to it (weight sharing, BatchNorm folding, training) ends it by doing so,
      with nothing to remember to delete, and :func:`weight_spec` never returns a grid
      that the values have left.

    Attributes:
        input: the per-tensor :class:`QuantSpec` of the input, or ``None``.
    """

    def __init__(self) -> None:
        self.input: QuantSpec | None = None
        self._weights: dict[str, tuple[QuantSpec, torch.Tensor, int]] = {}

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.input is None or not args[0].is_floating_point():
            return None
        return (fake_quantize(args[0], self.input),) + tuple(args[1:])

    @staticmethod
    def of(module: nn.Module) -> "LayerQuantizers | None":
        """The quantizers of ``module``, or ``None``."""
        return next((h for h in module._forward_pre_hooks.values() if isinstance(h, LayerQuantizers)), None)

    @classmethod
    def on(cls, module: nn.Module) -> "LayerQuantizers":
        """The quantizers of ``module``, attached first if it has none."""
        hook = cls.of(module)
        if hook is None:
            hook = cls()
            module.register_forward_pre_hook(hook)
        return hook

    @staticmethod
    def detach(module: nn.Module) -> None:
        """Remove every quantizer of ``module`` (nothing happens when it has none)."""
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, LayerQuantizers):
                del module._forward_pre_hooks[key]

    def claim(self, attr: str, tensor: torch.Tensor, spec: QuantSpec, verified: bool = True) -> None:
        """Record that ``tensor`` (the layer's ``attr``) holds points of ``spec``'s grid;
        ``verified=False`` records a claim that :func:`renew_weight_claims` must confirm."""
        self._weights[attr] = (spec, tensor, tensor._version if verified else -1)

    def weight(self, attr: str, tensor: torch.Tensor | None) -> QuantSpec | None:
        """The spec claimed for ``tensor``, if the claim still holds."""
        spec, claimed, version = self._weights.get(attr, (None, None, None))
        return spec if spec is not None and claimed is tensor and tensor._version == version else None

    def renew(self, module: nn.Module) -> None:
        """Confirm each claim whose tensor changed if its values are still on the grid, else drop it."""
        for attr, (spec, _, _) in list(self._weights.items()):
            tensor = module._parameters.get(attr)
            if tensor is not None and self.weight(attr, tensor) is None:
                if on_grid(tensor, spec):
                    self.claim(attr, tensor, spec)
                else:
                    del self._weights[attr]

    def __deepcopy__(self, memo: dict) -> "LayerQuantizers":
        twin = LayerQuantizers()
        twin.input = self.input
        for attr, (spec, tensor, version) in self._weights.items():
            copied = copy.deepcopy(tensor, memo)     # the copy's own parameter, through the memo
            twin._weights[attr] = (spec, copied, copied._version if tensor._version == version else -1)
        return twin


def freeze_weight_quantizer(module: nn.Module, attr: str = "weight") -> QuantSpec | None:
    """Fold the :class:`WeightQuantizer` of ``module.<attr>`` into a plain parameter holding
    ``x̂`` and claim its grid in the layer's :class:`LayerQuantizers`.

    Returns:
        The quantizer's spec, or ``None`` when the tensor has no :class:`WeightQuantizer`.
    """
    quantizer = _parametrization(module, attr, WeightQuantizer)
    if quantizer is None:
        return None
    fold_parametrization(module, attr)
    LayerQuantizers.on(module).claim(attr, module._parameters[attr], quantizer.spec)
    return quantizer.spec


def weight_spec(module: nn.Module, attr: str = "weight") -> QuantSpec | None:
    """The grid of ``module.<attr>``: its :class:`WeightQuantizer`, or the claim of its frozen
    quantizer while it holds; ``None`` otherwise."""
    quantizer = _parametrization(module, attr, WeightQuantizer)
    if quantizer is not None:
        return quantizer.spec
    hook = LayerQuantizers.of(module)
    return None if hook is None else hook.weight(attr, module._parameters.get(attr))


def renew_weight_claims(model: nn.Module) -> None:
    """After weights were loaded into ``model`` (which writes to them), confirm every
    frozen quantizer's claim whose values are on its grid; drop the others."""
    for module in model.modules():
        hook = LayerQuantizers.of(module)
        if hook is not None:
            hook.renew(module)


def attach_input_quantizer(module: nn.Module, spec: QuantSpec) -> None:
    """Quantize ``module``'s input with ``spec``, replacing an input quantizer it already has."""
    LayerQuantizers.on(module).input = spec


def input_spec(module: nn.Module) -> QuantSpec | None:
    """The :class:`QuantSpec` of ``module``'s input quantizer, or ``None``."""
    hook = LayerQuantizers.of(module)
    return None if hook is None else hook.input
