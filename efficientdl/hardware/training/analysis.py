"""One call that answers the user's questions about training a model on some hardware:
the step breakdown, memory, data-parallel scaling over several interconnects, the
ring / parameter-server crossover and the time and energy to train on a list of devices
— as data (a dict for JSON) that :func:`efficientdl.report.training.render_markdown` turns into tables.
"""

from __future__ import annotations

from dataclasses import replace

from ..energy import HardwareError
from ..workload import TrainingWorkload
from .cost import time_to_train
from .devices import (
    TRAINING_LINKS,
    TRAINING_TOPOLOGIES,
    Topology,
    TrainingDevice,
    get_training_device,
)
from .parallel import DEFAULT_BUCKET_BYTES, crossover, data_parallel_step, scaling
from .step import (
    calibrate_fraction,
    check_fits,
    default_fraction,
    get_precision,
    largest_batch,
    memory_footprint,
    training_step,
)

#: the default cluster of a device: its DGX, or 8 devices on PCIe 4 joined by 100 GbE
DEFAULT_TOPOLOGY = {"v100": "dgx1", "v100-32gb": "dgx1", "a100": "dgx-a100", "h100": "dgx-h100", "h200": "dgx-h100"}
#: interconnects compared in the scaling plot (inside a node: PCIe, NVLink; between nodes: Ethernet, InfiniBand)
COMPARE_LINKS = ("pcie3", "pcie4", "10gbe", "100gbe", "ib-hdr")


def default_topology(device: TrainingDevice, devices_per_node: int = 8) -> Topology:
    """The device's DGX topology, or ``devices_per_node`` devices on PCIe 4 with 100 GbE between nodes."""
    if device.name in DEFAULT_TOPOLOGY:
        return TRAINING_TOPOLOGIES[DEFAULT_TOPOLOGY[device.name]]
    if device.name.startswith("cpu"):
        return Topology("loopback", devices_per_node, TRAINING_LINKS["loopback"], TRAINING_LINKS["10gbe"])
    return Topology("pcie4-100gbe", devices_per_node, TRAINING_LINKS["pcie4"], TRAINING_LINKS["100gbe"])


def comparison_topologies(base: Topology, links: tuple[str, ...] = COMPARE_LINKS) -> dict[str, Topology]:
    """``{label: topology}``: ``base`` and variants with another link inside nodes (PCIe,
    NVLink names) or between nodes (Ethernet, InfiniBand names)."""
    out = {f"{base.name}": base}
    for name in links:
        link = TRAINING_LINKS[name]
        if name.startswith(("pcie", "nvlink", "loopback")):
            topo = replace(base, name=f"{name} in node", intra_link=link)
        else:
            topo = replace(base, name=f"{base.intra_link.name} + {name}", inter_link=link)
        out[topo.name] = topo
    return out


def analyse_training(workload: TrainingWorkload, device: TrainingDevice, batch: int, precision: str = "fp32",
                     optimizer: str = "sgd", devices: int = 8, topology: Topology | None = None,
                     algorithm: str = "ring", bucket_bytes: float = DEFAULT_BUCKET_BYTES, overlap: bool = True,
                     servers: int = 1, checkpointing: bool = False, achieved_fraction: float | None = None,
                     calibrate_samples_per_s: float | None = None, max_devices: int | None = None,
                     epochs: float = 90, dataset_samples: int = 1_281_167,
                     compare_devices: tuple[str, ...] = (), memory_format: str = "nchw") -> dict:
    """Everything ``edl hw train`` reports, as data.

    Args:
        workload: the network; device: the device; batch: samples per device.
        precision, optimizer, checkpointing, memory_format: as :func:`~.step.training_step`.
        devices: data-parallel devices of the configuration; max_devices: the scaling
            sweep's end (default ``max(devices, 64)``).
        topology: the cluster (default :func:`default_topology`); algorithm, bucket_bytes,
            overlap, servers: as :func:`~.parallel.data_parallel_step`.
        achieved_fraction: the factor (default: the documented default);
            calibrate_samples_per_s: a measured one-device throughput to fit it from instead.
        epochs, dataset_samples: for the time and energy to train.
        compare_devices: more devices for the side-by-side cost table (each at its default factor,
            the same batch or the largest that fits).

    Returns:
        A JSON-ready dict (``step``, ``memory``, ``parallel``, ``scaling``, ``crossover``, ``cost``, …).

    Raises:
        HardwareError: a batch that does not fit, a precision the device lacks, no weighted layer, …
    """
    p = get_precision(precision).name
    fp = check_fits(workload, device, batch, p, optimizer, checkpointing)
    if calibrate_samples_per_s is not None:
        achieved_fraction = calibrate_fraction(workload, device, batch, calibrate_samples_per_s, p, optimizer,
                                               checkpointing, memory_format)
        source = f"calibrated on {calibrate_samples_per_s:g} samples/s measured (1 device, batch {batch}, {p})"
    elif achieved_fraction is not None:
        source = "given (--achieved-fraction)"
    else:
        achieved_fraction, source = default_fraction(device, p)
    step = training_step(workload, device, batch, p, optimizer, achieved_fraction, source, checkpointing,
                         memory_format)
    topology = topology or default_topology(device)
    dp = data_parallel_step(step, devices, topology, algorithm, bucket_bytes, overlap, servers)
    top = max(devices, max_devices or 64)
    curves = {label: [d.to_dict() for d in scaling(step, top, topo, algorithm, bucket_bytes, overlap, servers)]
              for label, topo in comparison_topologies(topology).items()}
    costs = [time_to_train(step, device, epochs, dataset_samples, dp).to_dict() | {"batch": batch,
                                                                                   "achieved_fraction": achieved_fraction}]
    for name in compare_devices:
        other = get_training_device(name)
        if other.name == device.name:
            continue
        try:
            other.peak(get_precision(p).compute)
            prec = p
        except HardwareError:
            prec = "fp32" if "fp32" in other.peak_flops else next(iter(other.peak_flops))
        b = min(batch, largest_batch(workload, other, prec, optimizer, checkpointing))
        if b < 1:
            costs.append({"device": other.name, "error": "does not fit"})
            continue
        s = training_step(workload, other, b, prec, optimizer, checkpointing=checkpointing, memory_format=memory_format)
        d = data_parallel_step(s, devices, default_topology(other), algorithm, bucket_bytes, overlap, servers)
        costs.append(time_to_train(s, other, epochs, dataset_samples, d).to_dict()
                     | {"batch": b, "precision": prec, "achieved_fraction": s.achieved_fraction})
    return {
        "workload": {"name": workload.name, "params": workload.params, "macs_per_sample": workload.macs,
                     "layers": len(workload.layers), "input_shape": list(workload.input_shape)},
        "device": device.to_dict(),
        "topology": topology.to_dict(),
        "achieved_fraction": achieved_fraction, "fraction_source": source,
        "step": step.to_dict(),
        "memory": fp.to_dict() | {"largest_batch": largest_batch(workload, device, p, optimizer, False),
                                  "largest_batch_checkpointing": largest_batch(workload, device, p, optimizer, True),
                                  "with_checkpointing": memory_footprint(workload, batch, p, optimizer, True,
                                                                         device).to_dict()},
        "parallel": dp.to_dict(buckets=True),
        "scaling": curves,
        "crossover": crossover(step, min(top, 64), topology, servers, bucket_bytes),
        "cost": {"epochs": epochs, "dataset_samples": dataset_samples, "devices": costs},
    }
