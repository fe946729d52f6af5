"""Number formats: range, precision, cost, and emulation on tensors.

Formats: IEEE fp32 and fp16, bfloat16, two's-complement int32/int16/int8, and signed
fixed point ``Qm.n`` (1 sign bit, ``m`` integer bits, ``n`` fractional bits; value
``k · 2^-n`` for an integer ``k`` in ``[−2^(m+n), 2^(m+n) − 1]``), the format of
dynamic fixed-point quantization (Qiu et al., FPGA'16).

Emulation (:meth:`NumberFormat.quantize`) rounds to the nearest representable value
(ties to even) and saturates at the largest magnitude instead of overflowing to
infinity or wrapping around; the result stays a float tensor holding exactly the
representable values, so it can be used in a forward pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .energy import HOROWITZ_45NM, EnergyTable, HardwareError


@dataclass(frozen=True)
class NumberFormat:
    """A number format.

    Attributes:
        name: ``fp32``, ``fp16``, ``bf16``, ``int8``…, or ``Qm.n``.
        kind: ``"float"``, ``"int"`` or ``"fixed"``.
        bits: storage bits.
        exponent_bits, mantissa_bits: for floats (mantissa without the hidden bit).
        frac_bits: for fixed point, ``n``; 0 for integers.
    """

    name: str
    kind: str
    bits: int
    exponent_bits: int = 0
    mantissa_bits: int = 0
    frac_bits: int = 0

    # ----------------------------------------------------------------- range and precision
    @property
    def max_value(self) -> float:
        """Largest finite value."""
        if self.kind == "float":
            bias = (1 << (self.exponent_bits - 1)) - 1
            return (2.0 - 2.0 ** -self.mantissa_bits) * 2.0 ** bias
        return float((1 << (self.bits - 1)) - 1) * 2.0 ** -self.frac_bits

    @property
    def min_value(self) -> float:
        """Most negative finite value."""
        if self.kind == "float":
            return -self.max_value
        return -float(1 << (self.bits - 1)) * 2.0 ** -self.frac_bits

    @property
    def min_positive(self) -> float:
        """Smallest positive value (subnormal for floats)."""
        if self.kind == "float":
            bias = (1 << (self.exponent_bits - 1)) - 1
            return 2.0 ** (1 - bias - self.mantissa_bits)
        return 2.0 ** -self.frac_bits

    @property
    def min_normal(self) -> float:
        """Smallest positive normal float (for fixed point and integers: the step)."""
        if self.kind == "float":
            return 2.0 ** (2 - (1 << (self.exponent_bits - 1)))
        return self.min_positive

    @property
    def epsilon(self) -> float:
        """Spacing of representable values at 1.0 (floats) or everywhere (fixed point, integers)."""
        return 2.0 ** -self.mantissa_bits if self.kind == "float" else 2.0 ** -self.frac_bits

    @property
    def decimal_digits(self) -> float:
        """Precision in significant decimal digits (floats: log10 2^(mantissa+1))."""
        import math

        if self.kind == "float":
            return (self.mantissa_bits + 1) * math.log10(2)
        return (self.bits - 1) * math.log10(2)

    # ----------------------------------------------------------------- cost
    def _operation(self, op: str) -> str | None:
        if self.kind == "float":
            return f"fp{self.bits}_{op}" if self.name in ("fp32", "fp16") else None
        return f"int{self.bits}_{op}" if self.bits in (8, 16, 32) else None

    def energy_pj(self, op: str, table: EnergyTable = HOROWITZ_45NM) -> float | None:
        """Energy of one ``"add"`` or ``"mult"`` in this format, or None when the table lacks it.

        Fixed point uses the integer unit of the same width; bf16 has no entry in the 45 nm table.
        """
        name = self._operation(op)
        return table.energy_pj.get(name) if name else None

    def area_um2(self, op: str, table: EnergyTable = HOROWITZ_45NM) -> float | None:
        """Area of the ``"add"`` or ``"mult"`` unit, or None when not known."""
        name = self._operation(op)
        return table.area_um2.get(name) if name else None

    # ----------------------------------------------------------------- emulation
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to this format (nearest, ties to even) with saturation.

        Args:
            x: a floating tensor.

        Returns:
            A tensor of ``x``'s dtype (fp32 at least) holding representable values only;
            NaN stays NaN, ±inf saturate to the extreme finite values.
        """
        if not torch.is_floating_point(x):
            raise HardwareError(f"quantize needs a floating tensor, got {x.dtype}")
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self.kind == "float":
            target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.name]
            clamped = work.clamp(self.min_value, self.max_value)
            return clamped.to(target).to(work.dtype)
        scale = 2.0 ** self.frac_bits
        lo, hi = -float(1 << (self.bits - 1)), float((1 << (self.bits - 1)) - 1)
        k = torch.round(work.double() * scale).clamp(lo, hi)      # torch.round: half to even
        return (k / scale).to(work.dtype)

    def to_integer(self, x: torch.Tensor) -> torch.Tensor:
        """The stored integers of a fixed-point or integer format: ``round(x · 2^n)``, saturated."""
        if self.kind == "float":
            raise HardwareError(f"{self.name} is a floating-point format; it has no integer representation")
        dtype = next(d for b, d in ((8, torch.int8), (16, torch.int16), (32, torch.int32), (64, torch.int64))
                     if self.bits <= b)                                   # the smallest that holds it
        scale = 2.0 ** self.frac_bits
        lo, hi = -float(1 << (self.bits - 1)), float((1 << (self.bits - 1)) - 1)
        return torch.round(x.double() * scale).clamp(lo, hi).to(dtype)

    def summary(self) -> dict:
        """Range, precision and cost as a JSON-serialisable dict."""
        return {"name": self.name, "kind": self.kind, "bits": self.bits, "min": self.min_value,
                "max": self.max_value, "min_positive": self.min_positive, "min_normal": self.min_normal,
                "epsilon": self.epsilon, "decimal_digits": self.decimal_digits,
                "add_pj": self.energy_pj("add"), "mult_pj": self.energy_pj("mult"),
                "add_area_um2": self.area_um2("add"), "mult_area_um2": self.area_um2("mult")}


FP32 = NumberFormat("fp32", "float", 32, exponent_bits=8, mantissa_bits=23)
FP16 = NumberFormat("fp16", "float", 16, exponent_bits=5, mantissa_bits=10)
BF16 = NumberFormat("bf16", "float", 16, exponent_bits=8, mantissa_bits=7)
INT32 = NumberFormat("int32", "int", 32)
INT16 = NumberFormat("int16", "int", 16)
INT8 = NumberFormat("int8", "int", 8)

STANDARD_FORMATS = (FP32, FP16, BF16, INT32, INT16, INT8)

_Q = re.compile(r"^Q(\d+)\.(\d+)$")


def fixed_point(integer_bits: int, frac_bits: int) -> NumberFormat:
    """Signed fixed point ``Q<integer_bits>.<frac_bits>`` (total bits = 1 + m + n, at most 64)."""
    if integer_bits < 0 or frac_bits < 0 or not 1 <= 1 + integer_bits + frac_bits <= 64:
        raise HardwareError(f"Q{integer_bits}.{frac_bits}: need m, n ≥ 0 and 1 + m + n ≤ 64 bits")
    return NumberFormat(f"Q{integer_bits}.{frac_bits}", "fixed", 1 + integer_bits + frac_bits, frac_bits=frac_bits)


def get_format(name: str) -> NumberFormat:
    """A format by name: ``fp32``, ``fp16``, ``bf16``, ``int32``, ``int16``, ``int8`` or ``Qm.n``."""
    for f in STANDARD_FORMATS:
        if f.name == name:
            return f
    m = _Q.match(name)
    if m:
        return fixed_point(int(m.group(1)), int(m.group(2)))
    raise HardwareError(f"unknown number format {name!r} (known: {', '.join(f.name for f in STANDARD_FORMATS)}, Qm.n)")
