"""Device specifications for the roofline: peak throughput per precision, memory
bandwidth and on-chip memory.

Haswell, K80 and TPU v1 are Table 2 of Jouppi et al., "In-Datacenter Performance
Analysis of a Tensor Processing Unit", ISCA'17 (one K80 die; Haswell E5-2699 v3).
The other GPUs are from NVIDIA's data sheets (SXM parts, dense tensor-core figures
without sparsity; on-chip = L2 cache).  A user's device is read from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .energy import HardwareError, positive_number, read_yaml_mapping

PRECISIONS = ("int8", "fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Device:
    """A processor for the roofline model.

    Attributes:
        name: short name (``tpu-v1``).
        description: what it is and where the figures come from.
        peak_ops: precision → peak operations per second (a MAC is 2 operations).
        bandwidth_bytes_per_s: off-chip memory bandwidth.
        on_chip_bytes: on-chip memory that can hold weights.
        power_w: thermal design power, for energy estimates (power × time), or None.
    """

    name: str
    description: str
    peak_ops: dict[str, float]
    bandwidth_bytes_per_s: float
    on_chip_bytes: float
    power_w: float | None = None

    def peak(self, precision: str) -> float:
        """Peak ops/s at ``precision``; the closest wider precision when the device lists none."""
        order = PRECISIONS[PRECISIONS.index(precision):] if precision in PRECISIONS else ()
        for p in order:
            if p in self.peak_ops:
                return self.peak_ops[p]
        raise HardwareError(f"device {self.name} has no peak throughput for {precision!r} "
                            f"(it lists {', '.join(self.peak_ops)})")

    @property
    def ridge_point(self) -> dict[str, float]:
        """Operational intensity (ops/byte) where the roof turns flat, per precision."""
        return {p: v / self.bandwidth_bytes_per_s for p, v in self.peak_ops.items()}


T, G, MiB = 1e12, 1e9, float(1 << 20)
DEVICES = {d.name: d for d in [
    Device("haswell", "Intel Haswell E5-2699 v3 server CPU (Jouppi et al. ISCA'17, Table 2)",
           {"int8": 2.6 * T, "fp32": 1.3 * T}, 51 * G, 51 * MiB, 145),
    Device("k80", "NVIDIA K80, one die (Jouppi et al. ISCA'17, Table 2)", {"fp32": 2.8 * T}, 160 * G, 8 * MiB, 150),
    Device("tpu-v1", "Google TPU v1: 256×256 8-bit MACs at 700 MHz (Jouppi et al. ISCA'17)",
           {"int8": 92 * T}, 34 * G, 28 * MiB, 75),
    Device("p100", "NVIDIA P100 SXM2 (data sheet)", {"fp16": 21.2 * T, "fp32": 10.6 * T}, 732 * G, 4 * MiB, 300),
    Device("v100", "NVIDIA V100 SXM2 (data sheet; fp16 on tensor cores)", {"fp16": 125 * T, "fp32": 15.7 * T},
           900 * G, 6 * MiB, 300),
    Device("h100", "NVIDIA H100 SXM5 (data sheet; dense tensor cores)",
           {"int8": 1979 * T, "fp16": 989 * T, "bf16": 989 * T, "fp32": 67 * T}, 3350 * G, 50 * MiB, 700),
    Device("h200", "NVIDIA H200 SXM (data sheet; dense tensor cores)",
           {"int8": 1979 * T, "fp16": 989 * T, "bf16": 989 * T, "fp32": 67 * T}, 4800 * G, 50 * MiB, 700),
]}


def load_device(path: str | Path) -> Device:
    """Read a device from YAML::

        name: my-npu
        description: an 8-bit accelerator
        peak_ops: {int8: 4.0e12, fp16: 1.0e12}
        bandwidth_bytes_per_s: 25.6e9
        on_chip_bytes: 4194304
        power_w: 10            # optional, for energy estimates

    Raises:
        HardwareError: a missing file, bad YAML, unknown precision or non-positive figure.
    """
    p, d = read_yaml_mapping(path, {"name", "description", "peak_ops", "bandwidth_bytes_per_s", "on_chip_bytes",
                                    "power_w"})
    peaks = d.get("peak_ops")
    if not isinstance(peaks, dict) or not peaks:
        raise HardwareError(f"{p}: 'peak_ops' must map precisions ({', '.join(PRECISIONS)}) to ops/s")
    for k in peaks:
        if k not in PRECISIONS:
            raise HardwareError(f"{p}: peak_ops: unknown precision {k!r} (known: {', '.join(PRECISIONS)})")
    return Device(str(d.get("name", p.stem)), str(d.get("description", str(p))),
                  {k: positive_number(v, f"peak_ops.{k}", str(p)) for k, v in peaks.items()},
                  positive_number(d.get("bandwidth_bytes_per_s"), "bandwidth_bytes_per_s", str(p)),
                  positive_number(d.get("on_chip_bytes"), "on_chip_bytes", str(p)),
                  positive_number(d["power_w"], "power_w", str(p)) if "power_w" in d else None)


def get_device(name_or_path: str) -> Device:
    """A device of the database by name, or one read from a YAML file."""
    if name_or_path in DEVICES:
        return DEVICES[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")):
        return load_device(name_or_path)
    raise HardwareError(f"unknown device {name_or_path!r} (known: {', '.join(DEVICES)}, or a YAML file)")
