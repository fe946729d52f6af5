"""Time, device-hours and energy to train: epochs × dataset size over the step model.

``steps = ceil(epochs · samples / (N · b))``, ``wall = steps · step_time``,
``device-hours = N · wall / 3600``, ``energy = N · TDP · wall`` (the upper bound a data
centre bills; TDP × time), and, as in the inference models, the per-operation energy
of the 45 nm table (Horowitz, ISSCC'14): every FLOP half a multiply and half an add of
the precision, every 4 bytes moved one DRAM access (640 pJ) — arithmetic and DRAM only,
a lower bound that leaves out static power and on-chip memories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..energy import HOROWITZ_45NM, EnergyTable, HardwareError
from .devices import TrainingDevice
from .parallel import DataParallelStep
from .step import StepBreakdown

_TABLE_FORMAT = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "fp16", "int8": "int8"}


@dataclass(frozen=True)
class TrainingCost:
    """What training costs on one configuration.

    Attributes:
        device: device name; devices: how many.
        steps: optimizer steps; wall_time_s: their time.
        device_hours: ``devices · wall / 3600``.
        energy_j: ``devices · TDP · wall``.
        operation_energy_j: the 45 nm per-operation estimate (arithmetic + DRAM).
        samples_per_s: throughput of the configuration.
    """

    device: str
    devices: int
    steps: int
    wall_time_s: float
    device_hours: float
    energy_j: float
    operation_energy_j: float
    samples_per_s: float

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / 3.6e6

    def to_dict(self) -> dict:
        return {"device": self.device, "devices": self.devices, "steps": self.steps, "wall_time_s": self.wall_time_s,
                "device_hours": self.device_hours, "energy_j": self.energy_j, "energy_kwh": self.energy_kwh,
                "operation_energy_j": self.operation_energy_j, "samples_per_s": self.samples_per_s}


def time_to_train(step: StepBreakdown, device: TrainingDevice, epochs: float, dataset_samples: int,
                  parallel: DataParallelStep | None = None, table: EnergyTable = HOROWITZ_45NM) -> TrainingCost:
    """Wall time, device-hours and energy of ``epochs`` over ``dataset_samples`` samples.

    Args:
        step: the one-device step (batch per device, FLOPs and bytes per step).
        device: the device (its TDP).
        epochs: passes over the data (> 0).
        dataset_samples: samples per epoch (ImageNet-1k: 1,281,167).
        parallel: the data-parallel step on N devices (default: one device).
        table: the per-operation energy table.

    Returns:
        The :class:`TrainingCost`.
    """
    if not epochs > 0 or dataset_samples < 1:
        raise HardwareError(f"epochs and dataset size must be positive, got {epochs} and {dataset_samples}")
    n = parallel.devices if parallel else 1
    step_s = parallel.step_time_s if parallel else step.step_time_s
    steps = math.ceil(epochs * dataset_samples / (n * step.batch))
    wall = steps * step_s
    fmt = _TABLE_FORMAT[step.precision]
    per_flop_pj = (table.energy(f"{fmt}_mult") + table.energy(f"{fmt}_add")) / 2
    op_j = n * steps * (step.flops * per_flop_pj + step.bytes / 4 * table.energy("dram_read_32b")) * 1e-12
    return TrainingCost(device.name, n, steps, wall, n * wall / 3600, n * device.tdp_w * wall, op_j,
                        n * step.batch / step_s)
