"""A linear quantizer's parameters: what the quantization methods choose and the file stores.

:class:`QuantSpec` describes ``x̂ = (clamp(round(x / s) + z, q_min, q_max) − z) · s`` for
dynamic fixed point (Qiu et al., FPGA'16: ``s = 2^(−fl)``, ``z = 0``) and affine integers
(Jacob et al., CVPR'18).  This module imports no torch (only :meth:`QuantSpec.tensors`
does, when called), so the file format can validate a quantized tensor's record
without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

SCHEMES = ("fixed", "affine")
MIN_BITS, MAX_BITS = 2, 16


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

    def tensors(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(scale, zero_point)`` as float tensors broadcastable against ``x``."""
        import torch

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
            with np.errstate(over="ignore"):          # as used: float32 (too large → inf, refused below)
                scale = [float(np.float32(float(v))) for v in scale]
            if not all(math.isfinite(v) and v > 0 for v in scale):
                raise ValueError(f"{where}: scales must be finite and positive in float32")
        expected = 1 if axis is None else channels
        if expected is not None and len(scale) != expected:
            raise ValueError(f"{where}: {len(scale)} scales for {expected} channel(s)")
        return cls(d["scheme"], bits, qmin, qmax, scale, zp, fl, axis)


def integer_ranges(bits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The signed and the unsigned range of a ``bits``-bit integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1), (0, (1 << bits) - 1)
