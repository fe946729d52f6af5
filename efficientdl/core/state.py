"""The state a compression method adds to a weight, as ``torch.nn.utils.parametrize``
parametrizations, and the one small class that owns activation quantizers.

Every method leaves its result on the model itself, on the tensor it changed:

* pruning (Han et al., NIPS'15): :class:`WeightMask`, ``W ↦ W ⊙ M``;
* weight sharing (Han et al., ICLR'16): :class:`SharedWeight`, ``W = C[I]``;
* linear quantization (dynamic fixed point, Qiu et al. FPGA'16; int8 affine, Jacob et
  al. CVPR'18): :class:`WeightQuantizer`, ``W ↦ x̂ = (clamp(round(W/s) + z) − z) · s``,
  and :class:`InputQuantizer`, a forward pre-hook doing the same to a layer's input.

Because they are parametrizations, autograd trains through them (the centroid
gradient of weight sharing, the straight-through gradient of quantizers), one fold
(:func:`efficientdl.core.parametrize.fold_parametrization`) removes any of them, and a
method that changes a tensor's values folds first — a quantizer can never claim a
grid its values have left.  The file format reads the same objects
(:func:`weight_mask`, :func:`shared_weight`, :func:`weight_spec`, :func:`input_spec`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

SCHEMES = ("fixed", "affine")
MIN_BITS, MAX_BITS = 2, 16


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
        return self.codebook()[self.indices]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


def shared_weight(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` parametrization of ``module.<attr>``, if it has one."""
    if parametrize.is_parametrized(module, attr):
        for p in module.parametrizations[attr]:
            if isinstance(p, SharedWeight):
                return p
    return None



# --------------------------------------------------------------------------- linear quantization
@dataclass
class QuantSpec:
    """One quantizer: ``x̂ = (clamp(round(x / s) + z, q_min, q_max) − z) · s``.

    Attributes:
        scheme: ``"fixed"`` (dynamic fixed point, ``s = 2^(−fl)``, ``z = 0``) or ``"affine"``.
        bits: integer width ``b``.
        qmin, qmax: the integer range (signed ``[−2^(b−1), 2^(b−1) − 1]`` or unsigned ``[0, 2^b − 1]``).
        scale: ``s``, one per channel along ``axis`` (or one value).
        zero_point: ``z``, as ``scale``.
        frac_bits: for ``"fixed"``, the radix points ``fl`` (``s = 2^(−fl)``).
        axis: the channel axis of per-channel quantization (0, the output channels), or None.
    """

    scheme: str
    bits: int
    qmin: int
    qmax: int
    scale: list[float]
    zero_point: list[int]
    frac_bits: list[int] | None = None
    axis: int | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` as float tensors broadcastable against ``x``."""
        key = (x.device, x.dtype, x.dim())
        if key not in self._cache:
            s = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
            z = torch.tensor(self.zero_point, dtype=torch.float32, device=x.device)
            if self.axis is not None:
                shape = [1] * x.dim()
                shape[self.axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            else:
                s, z = s.reshape(()), z.reshape(())
            self._cache[key] = (s.to(x.dtype), z.to(x.dtype))
        return self._cache[key]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (see :meth:`from_json`)."""
        out = {"scheme": self.scheme, "bits": self.bits, "qmin": self.qmin, "qmax": self.qmax, "axis": self.axis}
        if self.scheme == "fixed":
            out["frac_bits"] = list(self.frac_bits)
        else:
            out.update(scale=list(self.scale), zero_point=list(self.zero_point))
        return out

    @classmethod
    def from_json(cls, d: Any, channels: int | None = None, where: str = "quantizer") -> "QuantSpec":
        """Validate and build a spec from :meth:`to_json`'s dict.

        Args:
            d: the dict.
            channels: the size of the channel axis, when the spec is per channel.
            where: names the source in error messages.

        Raises:
            ValueError: a missing field or an out-of-range value (one line).
        """
        if not isinstance(d, dict) or d.get("scheme") not in SCHEMES:
            raise ValueError(f"{where}: not a quantizer (scheme must be one of {', '.join(SCHEMES)})")
        bits, qmin, qmax, axis = d.get("bits"), d.get("qmin"), d.get("qmax"), d.get("axis")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (bits, qmin, qmax)) \
                or not MIN_BITS <= bits <= MAX_BITS or (qmin, qmax) not in integer_ranges(bits):
            raise ValueError(f"{where}: bits {bits!r} and range [{qmin!r}, {qmax!r}] are not a valid integer format")
        if axis not in (None, 0):
            raise ValueError(f"{where}: axis must be 0 or null, got {axis!r}")
        if d["scheme"] == "fixed":
            fl = d.get("frac_bits")
            if not isinstance(fl, list) or not fl or not all(isinstance(v, int) and not isinstance(v, bool)
                                                              and -64 <= v <= 64 for v in fl):
                raise ValueError(f"{where}: frac_bits must be a list of integers in [-64, 64]")
            scale, zp = [2.0 ** -v for v in fl], [0] * len(fl)
        else:
            fl, scale, zp = None, d.get("scale"), d.get("zero_point")
            if not isinstance(scale, list) or not isinstance(zp, list) or not scale or len(scale) != len(zp) \
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale) \
                    or not all(isinstance(v, int) and not isinstance(v, bool) and qmin <= v <= qmax for v in zp):
                raise ValueError(f"{where}: scales must be numbers, zero points integers in the range")
            scale = [float(torch.tensor(float(v), dtype=torch.float32)) for v in scale]   # as used: float32
            if not all(math.isfinite(v) and v > 0 for v in scale):
                raise ValueError(f"{where}: scales must be finite and positive in float32")
        expected = 1 if axis is None else channels
        if expected is not None and len(scale) != expected:
            raise ValueError(f"{where}: {len(scale)} scales for {expected} channel(s)")
        return cls(d["scheme"], bits, qmin, qmax, scale, zp, fl, axis)


def integer_ranges(bits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The signed and the unsigned range of a ``bits``-bit integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1), (0, (1 << bits) - 1)


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
    """Parametrization ``W ↦ fake_quantize(W, spec)``: the layer computes with ``x̂``.

    While fine-tuning, the latent fp32 weight trains and the forward pass sees its
    quantized value (straight-through gradient).  :func:`freeze_weight_quantizer` puts
    ``x̂`` itself into the stored weight.  Without gradients, the forward pass returns
    the stored tensor unchanged once it has been seen to lie on the grid and nothing
    wrote to it since (its version counter is the one recorded), so a frozen quantized
    model costs nothing extra per call; the values are on the grid by construction —
    still exactly if someone trains the latent weight further.

    Attributes:
        spec: the :class:`QuantSpec` of the weight.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self._on_grid: tuple[int, int] | None = None   # (id, version) of a stored tensor known to be x̂

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():          # training: the straight-through gradient is needed
            return fake_quantize(w, self.spec)
        if self._on_grid == (id(w), w._version):
            return w
        q = fake_quantize(w, self.spec)
        if torch.equal(q, w):                # checked once per stored tensor and write
            self._on_grid = (id(w), w._version)
        return q


def freeze_weight_quantizer(module: nn.Module, attr: str = "weight") -> QuantSpec | None:
    """Store ``x̂`` in the latent weight of ``module.<attr>`` and keep its quantizer.

    Returns:
        The quantizer's spec, or ``None`` when the tensor has no :class:`WeightQuantizer`.
    """
    quantizer = _parametrization(module, attr, WeightQuantizer)
    if quantizer is None:
        return None
    original = module.parametrizations[attr].original
    with torch.no_grad():
        original.copy_(fake_quantize(original, quantizer.spec))
    quantizer._on_grid = (id(original), original._version)
    return quantizer.spec


def only_weight_quantizers(module: nn.Module) -> bool:
    """Whether every parametrization of ``module`` (if any) is a :class:`WeightQuantizer`:
    its tensors then hold their values plainly, and a method may fold them."""
    return not parametrize.is_parametrized(module) or all(
        isinstance(p, WeightQuantizer) for name in module.parametrizations.keys() for p in module.parametrizations[name])


def weight_spec(module: nn.Module, attr: str = "weight") -> QuantSpec | None:
    """The :class:`QuantSpec` of the weight quantizer of ``module.<attr>``, or ``None``."""
    quantizer = _parametrization(module, attr, WeightQuantizer)
    return None if quantizer is None else quantizer.spec


class InputQuantizer:
    """The activation quantizer of a layer: a forward pre-hook ``x ↦ fake_quantize(x, spec)``.

    The one owner of activation quantizers: :meth:`attach` puts one on a module
    (replacing any it had), :meth:`of` finds it, :meth:`detach` removes it.  Integer
    inputs (an embedding's token indices) pass unchanged.

    Attributes:
        spec: the per-tensor :class:`QuantSpec` of the input.
    """

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        if not args[0].is_floating_point():
            return args
        return (fake_quantize(args[0], self.spec),) + tuple(args[1:])

    @staticmethod
    def of(module: nn.Module) -> "InputQuantizer | None":
        """The input quantizer of ``module``, or ``None``."""
        return next((h for h in module._forward_pre_hooks.values() if isinstance(h, InputQuantizer)), None)

    @staticmethod
    def detach(module: nn.Module) -> None:
        """Remove the input quantizer of ``module`` (nothing happens when it has none)."""
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, InputQuantizer):
                del module._forward_pre_hooks[key]

    @classmethod
    def attach(cls, module: nn.Module, spec: QuantSpec) -> "InputQuantizer":
        """Quantize ``module``'s input with ``spec``, replacing a quantizer it already has."""
        cls.detach(module)
        hook = cls(spec)
        module.register_forward_pre_hook(hook)
        return hook


def attach_input_quantizer(module: nn.Module, spec: QuantSpec) -> None:
    """Quantize ``module``'s input with ``spec`` (see :meth:`InputQuantizer.attach`)."""
    InputQuantizer.attach(module, spec)


def input_spec(module: nn.Module) -> QuantSpec | None:
    """The :class:`QuantSpec` of ``module``'s input quantizer, or ``None``."""
    hook = InputQuantizer.of(module)
    return None if hook is None else hook.spec
