"""Data-parallel training over an interconnect: all-reduce, parameter server, overlap.

Every device holds a replica and processes ``b`` samples; after the backward pass the
gradients (``G`` bytes) are averaged over the ``N`` devices.

* Ring all-reduce (Patarasuk & Yuan, JPDC 2009; Baidu/Horovod, NCCL): a reduce-scatter
  and an all-gather, ``2(N−1)`` steps each moving ``G/N`` bytes per device::

      t_ring = 2(N−1)·α + 2·(N−1)/N · G / β

  with ``β`` the bandwidth of the slowest link on the ring and ``α`` its per-message
  latency.  Across nodes with ``k`` ports each, ``k`` rings share the traffic, so
  ``β = min(β_intra, k·β_inter)``.
* Hierarchical (2-D) all-reduce: reduce-scatter in the node (``g`` devices), all-reduce
  of the ``G/g`` shards across the ``M`` nodes, all-gather in the node::

      t = 2·[(g−1)·α_i + (g−1)/g · G/β_i] + 2(M−1)·α_e + 2·(M−1)/M · G/(k·β_e)

* Parameter server (the lecture; Dean et al., "Large scale distributed deep networks",
  NIPS'12): workers push gradients and pull weights; ``s`` servers hold ``1/s`` of the
  weights each, and a server's link carries ``N·G/s`` bytes each way::

      t_ps = 2α + 2·max(N·G/(s·β_server), G/β_worker)

* Overlap with backward, as PyTorch ``DistributedDataParallel`` does (Li et al., "PyTorch
  Distributed", VLDB'20): gradients are grouped in reverse layer order into buckets of
  ``bucket_bytes`` (25 MiB; the first bucket 1 MiB); a bucket's all-reduce starts when
  its last gradient is ready and the previous bucket's all-reduce has finished::

      start_k = max(ready_k, end_{k−1}),  end_k = start_k + t(bytes_k)
      step = forward + max(backward, end_last) + optimizer

  so a step is never shorter than its compute (forward + backward + optimizer) nor than
  its communication (Σ t(bytes_k)), and never longer than their sum.

Scaling efficiency (weak scaling, batch per device fixed) is ``step(1) / step(N)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..energy import HardwareError
from .devices import Link, Topology
from .step import StepBreakdown

MiB = float(1 << 20)
#: DDP's defaults: ``bucket_cap_mb=25`` and a first bucket of 1 MiB (``dist._DEFAULT_FIRST_BUCKET_BYTES``)
DEFAULT_BUCKET_BYTES = 25 * MiB
DEFAULT_FIRST_BUCKET_BYTES = 1 * MiB
ALGORITHMS = ("ring", "hierarchical", "ps")


def ring_allreduce_time_s(size_bytes: float, devices: int, bytes_per_s: float, latency_s: float = 0.0) -> float:
    """``2(N−1)·α + 2(N−1)/N · bytes / β``; 0 for one device."""
    if devices <= 1 or size_bytes <= 0:
        return 0.0
    return 2 * (devices - 1) * latency_s + 2 * (devices - 1) / devices * size_bytes / bytes_per_s


def parameter_server_time_s(size_bytes: float, workers: int, server_bytes_per_s: float,
                            worker_bytes_per_s: float | None = None, latency_s: float = 0.0,
                            servers: int = 1) -> float:
    """``2α + 2·max(N·G/(s·β_server), G/β_worker)``: push gradients, pull weights; 0 for one worker."""
    if workers <= 1 or size_bytes <= 0:
        return 0.0
    worker = size_bytes / (worker_bytes_per_s or server_bytes_per_s)
    return 2 * latency_s + 2 * max(workers * size_bytes / (servers * server_bytes_per_s), worker)


def _flat_link(topology: Topology, devices: int) -> tuple[float, float]:
    """``(β, α)`` of a flat ring over ``devices`` devices of the topology: its slowest link."""
    intra = topology.intra_link
    if topology.nodes(devices) <= 1:
        return intra.bytes_per_s, intra.latency_s
    inter = _inter(topology)
    return min(intra.bytes_per_s, topology.nics_per_node * inter.bytes_per_s), max(intra.latency_s, inter.latency_s)


def _inter(topology: Topology) -> Link:
    if topology.inter_link is None:
        raise HardwareError(f"topology {topology.name} has {topology.devices_per_node} devices per node and no "
                            f"link between nodes")
    return topology.inter_link


def allreduce_time_s(size_bytes: float, devices: int, topology: Topology, algorithm: str = "ring",
                     servers: int = 1) -> float:
    """Time to average ``size_bytes`` of gradients over ``devices`` devices of ``topology``.

    Args:
        algorithm: ``ring`` (flat, slowest link), ``hierarchical`` (2-D) or ``ps``
            (parameter server on the inter-node link, or the intra-node link on one node).
        servers: parameter servers (``ps`` only).
    """
    if devices <= 1:
        return 0.0
    nodes = topology.nodes(devices)
    if algorithm == "ring" or (algorithm == "hierarchical" and nodes == 1):
        beta, alpha = _flat_link(topology, devices)
        return ring_allreduce_time_s(size_bytes, devices, beta, alpha)
    if algorithm == "hierarchical":
        g, intra, inter = topology.devices_per_node, topology.intra_link, _inter(topology)
        local = 2 * ((g - 1) * intra.latency_s + (g - 1) / g * size_bytes / intra.bytes_per_s)
        return local + ring_allreduce_time_s(size_bytes, nodes, topology.nics_per_node * inter.bytes_per_s,
                                             inter.latency_s)
    if algorithm == "ps":
        link = topology.intra_link if nodes == 1 else _inter(topology)
        return parameter_server_time_s(size_bytes, devices, link.bytes_per_s, link.bytes_per_s, link.latency_s,
                                       servers)
    raise HardwareError(f"unknown all-reduce algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")


@dataclass(frozen=True)
class Bucket:
    """One gradient bucket: its bytes, when its gradients are ready (from the start of the
    backward pass) and when its all-reduce starts and ends."""

    size_bytes: float
    ready_s: float
    start_s: float
    end_s: float

    def to_dict(self) -> dict:
        return {"size_bytes": self.size_bytes, "ready_s": self.ready_s, "start_s": self.start_s, "end_s": self.end_s}


def gradient_buckets(step: StepBreakdown, bucket_bytes: float = DEFAULT_BUCKET_BYTES,
                     first_bucket_bytes: float = DEFAULT_FIRST_BUCKET_BYTES) -> list[tuple[float, float]]:
    """``[(bytes, ready_s)]``: gradients in reverse layer order, grouped as DDP does.

    A bucket closes once it holds at least its cap (the first ``first_bucket_bytes``, the
    others ``bucket_bytes``); it is ready when the backward pass of its last layer ends.
    """
    if not bucket_bytes > 0:
        raise HardwareError(f"bucket size must be positive, got {bucket_bytes}")
    out, size, clock = [], 0.0, step.recompute_s
    cap = min(first_bucket_bytes, bucket_bytes)
    for layer in reversed(step.layers):
        clock += layer.backward_s
        if not layer.params:
            continue
        size += layer.params * step.gradient_bytes_per_param
        if size >= cap:
            out.append((size, clock))
            size, cap = 0.0, bucket_bytes
    if size:
        out.append((size, clock))
    return out


@dataclass(frozen=True)
class DataParallelStep:
    """One data-parallel step on ``devices`` devices.

    Attributes:
        devices: number of devices; algorithm: ``ring``, ``hierarchical`` or ``ps``.
        topology: its name; overlap: whether communication overlaps the backward pass.
        forward_s, backward_s, optimizer_s: the one-device compute phases.
        communication_s: Σ of the buckets' all-reduce times.
        exposed_communication_s: communication not hidden behind the backward pass.
        step_time_s: the step; samples_per_s: ``devices · batch / step``.
        scaling_efficiency: ``step(1 device) / step``.
        buckets: the :class:`Bucket` timeline.
    """

    devices: int
    algorithm: str
    topology: str
    overlap: bool
    batch: int
    forward_s: float
    backward_s: float
    optimizer_s: float
    communication_s: float
    exposed_communication_s: float
    step_time_s: float
    samples_per_s: float
    scaling_efficiency: float
    buckets: tuple[Bucket, ...]

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s + self.optimizer_s

    def to_dict(self, buckets: bool = False) -> dict:
        d = {"devices": self.devices, "algorithm": self.algorithm, "topology": self.topology, "overlap": self.overlap,
             "batch": self.batch, "forward_s": self.forward_s, "backward_s": self.backward_s,
             "optimizer_s": self.optimizer_s, "compute_s": self.compute_s, "communication_s": self.communication_s,
             "exposed_communication_s": self.exposed_communication_s, "step_time_s": self.step_time_s,
             "samples_per_s": self.samples_per_s, "scaling_efficiency": self.scaling_efficiency}
        if buckets:
            d["buckets"] = [b.to_dict() for b in self.buckets]
        return d


def data_parallel_step(step: StepBreakdown, devices: int, topology: Topology, algorithm: str = "ring",
                       bucket_bytes: float = DEFAULT_BUCKET_BYTES, overlap: bool = True, servers: int = 1,
                       first_bucket_bytes: float = DEFAULT_FIRST_BUCKET_BYTES) -> DataParallelStep:
    """The step of ``step``'s model on ``devices`` devices of ``topology`` (module docstring).

    Args:
        step: the one-device step (its batch is the batch per device).
        devices: N ≥ 1.
        topology: the cluster (devices per node, links).
        algorithm: ``ring``, ``hierarchical`` or ``ps``.
        bucket_bytes: DDP bucket cap (25 MiB).
        overlap: overlap the all-reduce with the backward pass (False: after it).
        servers: parameter servers (``ps``).

    Returns:
        The :class:`DataParallelStep`.
    """
    if devices < 1:
        raise HardwareError(f"the number of devices must be ≥ 1, got {devices}")
    if algorithm not in ALGORITHMS:
        raise HardwareError(f"unknown all-reduce algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    fwd, bwd, opt = step.forward_s, step.backward_s, step.optimizer_step.time_s
    timeline, end = [], 0.0
    for size, ready in gradient_buckets(step, bucket_bytes, first_bucket_bytes):
        t = allreduce_time_s(size, devices, topology, algorithm, servers)
        start = max(ready, end) if overlap else max(bwd, end)
        end = start + t
        timeline.append(Bucket(size, ready, start, end))
    comm = sum(b.end_s - b.start_s for b in timeline)
    finish = max(bwd, end)
    total = fwd + finish + opt
    single = step.step_time_s
    return DataParallelStep(devices, algorithm, topology.name, overlap, step.batch, fwd, bwd, opt, comm,
                            finish - bwd, total, devices * step.batch / total, single / total, tuple(timeline))


def scaling(step: StepBreakdown, max_devices: int, topology: Topology, algorithm: str = "ring",
            bucket_bytes: float = DEFAULT_BUCKET_BYTES, overlap: bool = True, servers: int = 1,
            counts: list[int] | None = None) -> list[DataParallelStep]:
    """:func:`data_parallel_step` for 1, 2, 4, … up to ``max_devices`` (or the given ``counts``)."""
    if max_devices < 1:
        raise HardwareError(f"the number of devices must be ≥ 1, got {max_devices}")
    if counts is None:
        counts, n = [], 1
        while n < max_devices:
            counts.append(n)
            n *= 2
        counts.append(max_devices)
    return [data_parallel_step(step, n, topology, algorithm, bucket_bytes, overlap, servers) for n in counts]


def crossover(step: StepBreakdown, max_devices: int, topology: Topology, servers: int = 1,
              bucket_bytes: float = DEFAULT_BUCKET_BYTES) -> dict:
    """Where ring all-reduce and the parameter server trade places, from 2 to ``max_devices``.

    Returns:
        ``{"faster": [(N, "ring"|"ps"), ...], "crossover_devices": the first N at which the
        faster scheme differs from the one at N = 2 (None if it never does), "servers": s}``.
    """
    faster = []
    for n in range(2, max_devices + 1):
        ring = data_parallel_step(step, n, topology, "ring", bucket_bytes).step_time_s
        ps = data_parallel_step(step, n, topology, "ps", bucket_bytes, servers=servers).step_time_s
        faster.append((n, "ring" if ring <= ps else "ps"))
    first = faster[0][1] if faster else None
    cross = next((n for n, f in faster if f != first), None)
    return {"faster": faster, "crossover_devices": cross, "servers": servers,
            "at_2": first}
