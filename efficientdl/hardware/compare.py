"""CPU, GPU, TPU and EIE side by side for the same layers (the lecture's speedup and
energy-efficiency comparison, after Han et al. ISCA'16 Figures 6–7).

How each platform is estimated:

* CPU and GPU, dense and sparse: the roofline — per layer and batch,
  ``max(ops / peak, bytes / bandwidth)`` with ops = 2 × MACs; dense layers read fp32
  weights and do every MAC, sparse layers read CSR (fp32 value + 32-bit index per
  nonzero) and do only the MACs on nonzero weights; energy = the device's TDP × time.
* TPU: the weight-stationary systolic array model (8-bit dense weights fetched from
  DRAM; cycles, stalls); energy = TDP × time.
* EIE: the cycle-level model on the compressed layers; energy from the per-PE power.

Roofline and TDP figures are upper-bound style estimates (perfect overlap at the
roof, full power while running); EIE and TPU come from their simulators.
"""

from __future__ import annotations

from dataclasses import replace

from .devices import Device
from .systolic import SystolicConfig, simulate_layers
from .workload import LayerWorkload


def roofline_time_s(layers: list[LayerWorkload], device: Device, batch: int, precision: str,
                    useful_only: bool) -> float:
    """Seconds for one batch: Σ over layers of max(compute time, memory time)."""
    total = 0.0
    for layer in layers:
        macs = layer.effective_macs if useful_only else layer.macs
        compute = 2.0 * macs * batch / device.peak(precision)
        memory = (layer.weight_bytes + layer.activation_bytes(batch)) / device.bandwidth_bytes_per_s
        total += max(compute, memory)
    return total


def compare(dense: list[LayerWorkload], compressed: list[LayerWorkload], eie_latency_s: float,
            eie_energy_j: float, cpu: Device, gpu: Device, tpu: Device, batch: int = 1,
            systolic: SystolicConfig | None = None, eie_label: str = "cycle-level model") -> list[dict]:
    """Latency, throughput and energy per inference of the same layers on each platform.

    Args:
        dense: the layers as stored dense (fp32).
        compressed: the same layers pruned (their ``nonzero_weights`` and densities).
        eie_latency_s, eie_energy_j: EIE's simulated time and energy for one input.
        cpu, gpu, tpu: devices (TDP in ``power_w``).
        batch: inputs per weight fetch (EIE runs them one after another).
        systolic: the TPU array (default: TPU v1 with ``tpu``'s bandwidth).
        eie_label: how the EIE figures were obtained (shown in the table).

    Returns:
        One dict per platform: ``platform``, ``method``, ``latency_us`` (one batch),
        ``throughput_per_s``, ``energy_uj`` (per inference), ``speedup`` and
        ``energy_efficiency`` (both relative to the dense CPU).
    """
    sparse = [replace(layer, weight_bits=64.0) for layer in compressed]        # CSR: fp32 value + int32 index
    systolic = systolic or SystolicConfig(bandwidth_bytes_per_s=tpu.bandwidth_bytes_per_s)
    int8 = [replace(layer, weight_bits=8.0, nonzero_weights=layer.weights, activation_bits=8) for layer in dense]
    tpu_s = sum(r["seconds"] for r in simulate_layers(int8, batch, systolic))
    entries = [
        ("CPU dense", f"roofline, {cpu.name} fp32", roofline_time_s(dense, cpu, batch, "fp32", False), cpu.power_w),
        ("CPU sparse", f"roofline, {cpu.name} CSR", roofline_time_s(sparse, cpu, batch, "fp32", True), cpu.power_w),
        ("GPU dense", f"roofline, {gpu.name} fp32", roofline_time_s(dense, gpu, batch, "fp32", False), gpu.power_w),
        ("GPU sparse", f"roofline, {gpu.name} CSR", roofline_time_s(sparse, gpu, batch, "fp32", True), gpu.power_w),
        ("TPU", f"systolic array {systolic.rows}×{systolic.cols}, int8", tpu_s, tpu.power_w),
    ]
    rows = []
    for platform, method, seconds, power in entries:
        rows.append({"platform": platform, "method": method, "latency_us": seconds * 1e6,
                     "energy_uj": (power or 0.0) * seconds / batch * 1e6})
    rows.append({"platform": "EIE", "method": eie_label, "latency_us": eie_latency_s * batch * 1e6,
                 "energy_uj": eie_energy_j * 1e6})
    base = rows[0]
    for r in rows:
        r["throughput_per_s"] = batch / (r["latency_us"] * 1e-6) if r["latency_us"] else float("inf")
        r["speedup"] = base["latency_us"] / r["latency_us"] if r["latency_us"] else float("inf")
        r["energy_efficiency"] = base["energy_uj"] / r["energy_uj"] if r["energy_uj"] else float("inf")
    return rows
