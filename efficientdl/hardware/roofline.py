"""The roofline model (Williams, Waterman, Patterson, CACM 2009), as used for the TPU
(Jouppi et al., ISCA'17):

    attainable ops/s = min(peak ops/s, operational intensity × memory bandwidth)

A layer left of the ridge point (intensity < peak / bandwidth) is memory-bound.  The
TPU paper measures intensity in operations per *weight* byte (weights dominate the
traffic of its MLPs and LSTMs); we report that and the intensity over all traffic
(weights + input and output activations).  Compression moves a layer to the right:
the same useful work over fewer weight bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .devices import Device
from .workload import LayerWorkload

#: The six production applications of the TPU paper: ops per weight byte (Table 1, Figure 5).
TPU_APPLICATIONS = {"MLP0": 200, "MLP1": 168, "LSTM0": 64, "LSTM1": 96, "CNN0": 2888, "CNN1": 1750}


@dataclass(frozen=True)
class RooflinePoint:
    """One layer on one device's roofline.

    Attributes:
        name: layer or application name.
        ops: operations per batch (2 per useful MAC).
        intensity_weight: ops per weight byte.
        intensity_total: ops per byte of weights + activations (None if unknown).
        attainable_ops: ops/s the roof allows at ``intensity_weight``.
        bound: ``"memory"`` or ``"compute"``.
        time_s: ``ops / attainable_ops``.
    """

    name: str
    ops: float
    intensity_weight: float
    intensity_total: float | None
    attainable_ops: float
    bound: str
    time_s: float


def attainable(device: Device, intensity: float, precision: str) -> tuple[float, str]:
    """``(min(peak, intensity × bandwidth), bound)`` for ops/byte ``intensity``."""
    peak = device.peak(precision)
    memory = intensity * device.bandwidth_bytes_per_s
    return (memory, "memory") if memory < peak else (peak, "compute")


def layer_point(layer: LayerWorkload, device: Device, batch: int = 1, precision: str = "int8",
                useful_only: bool = True) -> RooflinePoint:
    """Place a layer at a batch size on a device's roofline.

    Args:
        layer: the layer's workload.
        device: the processor.
        batch: samples per weight fetch (weights are read once per batch).
        precision: arithmetic precision for the peak.
        useful_only: count only the MACs on nonzero weights (and activations, for fc) —
            the work a sparse engine does; False counts the dense MACs.

    Returns:
        The :class:`RooflinePoint`.
    """
    macs = layer.effective_macs if useful_only else layer.macs
    ops = 2.0 * macs * batch
    wbytes = max(layer.weight_bytes, 1e-30)
    iw = ops / wbytes
    it = ops / (wbytes + layer.activation_bytes(batch))
    perf, bound = attainable(device, iw, precision)
    return RooflinePoint(layer.name, ops, iw, it, perf, bound, ops / perf if perf else float("inf"))


def application_point(name: str, ops_per_weight_byte: float, device: Device,
                      precision: str = "int8") -> RooflinePoint:
    """A point given only its intensity (the TPU paper's applications)."""
    perf, bound = attainable(device, ops_per_weight_byte, precision)
    return RooflinePoint(name, float("nan"), ops_per_weight_byte, None, perf, bound, float("nan"))
