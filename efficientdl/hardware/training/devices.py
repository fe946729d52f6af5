"""Training devices and interconnects: the figures the training-step model reads.

Devices (peak FLOP/s per precision, memory bandwidth and capacity, TDP):

* the lecture's training hardware (Han & Dally, "Efficient Methods and Hardware for
  Deep Learning", after Sze et al.'s MICRO'16 tutorial and NVIDIA/Google): Knights
  Landing 7 TFLOPS fp32, 16 GB MCDRAM at 400 GB/s, 245 W; Pascal P100 10.6 / 21.2
  TFLOPS fp32 / fp16 (data sheet; the lecture rounds to 10/20), 732 GB/s (lecture: 750),
  160 GB/s NVLink, 300 W; Volta V100 15.7 fp32 / 125 tensor TFLOPS (lecture: 15 / 120),
  900 GB/s, 300 GB/s NVLink, 300 W; Cloud TPU 180 TFLOPS per device of four chips;
* A100, H100, H200 from NVIDIA's data sheets (SXM parts, dense tensor-core figures
  without structured sparsity);
* ``cpu``: this machine's CPU, one core, from the probe :func:`probe_cpu` (a 1-thread
  fp32 matmul and a large ``memcpy``), recorded once (the documented default), or
  ``cpu-probe`` measured when asked for.

Links (bytes per second *per direction per device*, and a per-message latency): PCIe
3/4/5 ×16 (PCI-SIG: 8/16/32 GT/s per lane, 128b/130b coding), NVLink 1–4 (NVIDIA: 20,
25, 25, 25 GB/s per link per direction × 4, 6, 12, 18 links on P100, V100, A100, H100),
10/25/100 Gigabit Ethernet and InfiniBand EDR/HDR/NDR (100/200/400 Gb/s per port).  The
latencies are order-of-magnitude figures for a collective library's message (NCCL over
NVLink/PCIe a few µs, over InfiniBand ~5 µs, over TCP Ethernet ~20 µs), not measurements.

Users add devices, links and topologies in YAML (:func:`load_hardware_file`); every
error names the file and the line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..energy import HardwareError, positive_number

#: precisions of the training model; a device lists the ones it has
TRAINING_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")

T, G, GiB = 1e12, 1e9, float(1 << 30)


@dataclass(frozen=True)
class TrainingDevice:
    """One accelerator (or CPU core) as the training-step model sees it.

    Attributes:
        name: short name (``v100``).
        description: what it is.
        source: where the figures come from.
        peak_flops: precision → peak floating-point (or int8) operations per second (a
            multiply-accumulate is 2 operations).
        memory_bandwidth_bytes_per_s: off-chip memory bandwidth.
        memory_bytes: memory capacity of one device.
        tdp_w: thermal design power (energy = TDP × time).
        tensor_precisions: precisions executed on matrix units (tensor cores, MXU); the
            achieved fraction of a CUDA-core precision carries to them through
            :data:`TENSOR_CORE_RATIO` (see :mod:`.step`).
    """

    name: str
    description: str
    source: str
    peak_flops: dict[str, float]
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    tdp_w: float
    tensor_precisions: tuple[str, ...] = ()

    def peak(self, precision: str) -> float:
        """Peak operations per second at ``precision``.

        Raises:
            HardwareError: the device has no such precision (``tf32`` before Ampere,
                ``int8`` where it is not listed).
        """
        if precision not in self.peak_flops:
            raise HardwareError(f"device {self.name} has no {precision} arithmetic "
                                f"(it has {', '.join(self.peak_flops)})")
        return self.peak_flops[precision]

    @property
    def vector_peak_flops(self) -> float:
        """Peak of the non-matrix (CUDA-core / vector) units, for elementwise layers: fp32
        where listed, else the smallest listed peak."""
        return self.peak_flops.get("fp32", min(self.peak_flops.values()))

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "peak_flops": dict(self.peak_flops), "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
                "memory_bytes": self.memory_bytes, "tdp_w": self.tdp_w,
                "tensor_precisions": list(self.tensor_precisions)}


@dataclass(frozen=True)
class Link:
    """An interconnect between devices.

    Attributes:
        name: short name (``nvlink2``).
        bytes_per_s: bandwidth per direction that one device can drive (all its lanes or
            links together).
        latency_s: time of one message besides its bytes (the α of the α–β model).
        source: where the figures come from.
    """

    name: str
    bytes_per_s: float
    latency_s: float
    source: str

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes_per_s": self.bytes_per_s, "latency_s": self.latency_s, "source": self.source}


@dataclass(frozen=True)
class Topology:
    """A hierarchical cluster: ``devices_per_node`` devices on ``intra_link`` inside a node,
    nodes joined by ``inter_link`` with ``nics_per_node`` ports per node.

    Attributes:
        name: short name (``dgx1``).
        devices_per_node: devices in one node (≥ 1).
        intra_link: the link inside a node.
        inter_link: the link between nodes (None: one node only).
        nics_per_node: inter-node ports per node (their bandwidths add).
    """

    name: str
    devices_per_node: int
    intra_link: Link
    inter_link: Link | None = None
    nics_per_node: int = 1

    def nodes(self, devices: int) -> int:
        """Nodes that ``devices`` devices occupy."""
        return -(-devices // self.devices_per_node)

    def to_dict(self) -> dict:
        return {"name": self.name, "devices_per_node": self.devices_per_node, "intra_link": self.intra_link.to_dict(),
                "inter_link": self.inter_link.to_dict() if self.inter_link else None,
                "nics_per_node": self.nics_per_node}


_NV = "NVIDIA data sheet"
#: the CPU default: :func:`probe_cpu` on this machine (AMD EPYC, 2 cores, 1 thread), recorded once
CPU_DEFAULT = {"fp32_flops_per_s": 9.5e10, "memory_bandwidth_bytes_per_s": 3.25e10}

TRAINING_DEVICES: dict[str, TrainingDevice] = {d.name: d for d in [
    TrainingDevice("knl", "Intel Xeon Phi Knights Landing (2016)", "the lecture (Sze et al. MICRO'16 tutorial; Intel)",
                   {"fp32": 7 * T}, 400 * G, 16 * GiB, 245),
    TrainingDevice("p100", "NVIDIA Tesla P100 SXM2 16 GB (Pascal GP100)",
                   "data sheet 10.6/21.2 TFLOPS fp32/fp16, 732 GB/s; the lecture 10/20 TFLOPS, 750 GB/s, 300 W",
                   {"fp32": 10.6 * T, "fp16": 21.2 * T, "bf16": 21.2 * T}, 732 * G, 16 * GiB, 300),
    TrainingDevice("v100", "NVIDIA Tesla V100 SXM2 16 GB (Volta GV100, tensor cores)",
                   f"{_NV}: 15.7 fp32 / 125 tensor TFLOPS, 900 GB/s, 300 W (lecture: 15 / 120)",
                   {"fp32": 15.7 * T, "fp16": 125 * T}, 900 * G, 16 * GiB, 300, ("fp16",)),
    TrainingDevice("v100-32gb", "NVIDIA Tesla V100 SXM2 32 GB", f"{_NV}: as v100 with 32 GB HBM2",
                   {"fp32": 15.7 * T, "fp16": 125 * T}, 900 * G, 32 * GiB, 300, ("fp16",)),
    TrainingDevice("tpu-v2", "Google Cloud TPU v2 device (four chips)",
                   "the lecture: 180 TFLOPS per Cloud TPU; per chip 16 GiB HBM at 700 GB/s, 280 W "
                   "(Jouppi et al., CACM 63(7), 2020; approximate)",
                   {"bf16": 180 * T}, 4 * 700 * G, 64 * GiB, 4 * 280, ("bf16",)),
    TrainingDevice("a100", "NVIDIA A100 SXM4 80 GB (Ampere)",
                   f"{_NV}: 19.5 fp32, 156 tf32, 312 fp16/bf16, 624 int8 TFLOPS (dense), 2039 GB/s, 400 W",
                   {"fp32": 19.5 * T, "tf32": 156 * T, "fp16": 312 * T, "bf16": 312 * T, "int8": 624 * T},
                   2039 * G, 80 * GiB, 400, ("tf32", "fp16", "bf16", "int8")),
    TrainingDevice("h100", "NVIDIA H100 SXM5 80 GB (Hopper)",
                   f"{_NV}: 67 fp32, 495 tf32, 989 fp16/bf16, 1979 int8 TFLOPS (dense), 3.35 TB/s, 700 W",
                   {"fp32": 67 * T, "tf32": 495 * T, "fp16": 989 * T, "bf16": 989 * T, "int8": 1979 * T},
                   3350 * G, 80 * GiB, 700, ("tf32", "fp16", "bf16", "int8")),
    TrainingDevice("h200", "NVIDIA H200 SXM 141 GB (Hopper, HBM3e)",
                   f"{_NV}: compute as H100; 141 GB at 4.8 TB/s, 700 W",
                   {"fp32": 67 * T, "tf32": 495 * T, "fp16": 989 * T, "bf16": 989 * T, "int8": 1979 * T},
                   4800 * G, 141 * G, 700, ("tf32", "fp16", "bf16", "int8")),
    TrainingDevice("cpu", "this machine's CPU, one core (AMD EPYC; 1 thread)",
                   "probe_cpu() on this machine, recorded once: 1-thread fp32 matmul, 256 MiB copy; TDP: a 2-core "
                   "share of a 225 W EPYC (assumed)",
                   {"fp32": CPU_DEFAULT["fp32_flops_per_s"]}, CPU_DEFAULT["memory_bandwidth_bytes_per_s"], 8 * GiB,
                   225 / 32),
]}

_PCI = "PCI-SIG: ×16, 128b/130b coding"
_NVL = "NVIDIA: per link 20 GB/s (NVLink 1) or 25 GB/s (2–4) per direction"
TRAINING_LINKS: dict[str, Link] = {lk.name: lk for lk in [
    Link("pcie3", 15.75 * G, 5e-6, f"{_PCI}, 8 GT/s per lane"),
    Link("pcie4", 31.5 * G, 5e-6, f"{_PCI}, 16 GT/s per lane"),
    Link("pcie5", 63.0 * G, 5e-6, f"{_PCI}, 32 GT/s per lane"),
    Link("nvlink1", 80 * G, 3e-6, f"{_NVL}; P100: 4 links = 160 GB/s both directions (the lecture)"),
    Link("nvlink2", 150 * G, 3e-6, f"{_NVL}; V100: 6 links = 300 GB/s both directions (the lecture); DGX-1 "
                                   "hybrid cube mesh"),
    Link("nvlink3", 300 * G, 3e-6, f"{_NVL}; A100: 12 links = 600 GB/s both directions; DGX A100 NVSwitch"),
    Link("nvlink4", 450 * G, 3e-6, f"{_NVL}; H100: 18 links = 900 GB/s both directions"),
    Link("10gbe", 1.25 * G, 20e-6, "IEEE 802.3: 10 Gb/s; TCP latency (approximate)"),
    Link("25gbe", 3.125 * G, 20e-6, "IEEE 802.3by: 25 Gb/s; TCP latency (approximate)"),
    Link("100gbe", 12.5 * G, 20e-6, "IEEE 802.3: 100 Gb/s; TCP latency (approximate)"),
    Link("ib-edr", 12.5 * G, 5e-6, "InfiniBand Trade Association: EDR 4× = 100 Gb/s"),
    Link("ib-hdr", 25 * G, 5e-6, "InfiniBand Trade Association: HDR 4× = 200 Gb/s"),
    Link("ib-ndr", 50 * G, 5e-6, "InfiniBand Trade Association: NDR 4× = 400 Gb/s"),
    Link("loopback", 2.0 * G, 100e-6, "gloo over TCP loopback on this machine (order of magnitude; the "
                                      "training benchmark measures it)"),
]}

#: named clusters: DGX-1 (8 V100, NVLink hybrid cube mesh, 4 EDR ports), DGX A100 (8 A100, NVSwitch, 8 HDR ports),
#: DGX H100 (8 H100, NVSwitch, 8 NDR ports), a PCIe box on 100 GbE
TRAINING_TOPOLOGIES: dict[str, Topology] = {t.name: t for t in [
    Topology("dgx1", 8, TRAINING_LINKS["nvlink2"], TRAINING_LINKS["ib-edr"], 4),
    Topology("dgx-a100", 8, TRAINING_LINKS["nvlink3"], TRAINING_LINKS["ib-hdr"], 8),
    Topology("dgx-h100", 8, TRAINING_LINKS["nvlink4"], TRAINING_LINKS["ib-ndr"], 8),
    Topology("pcie-100gbe", 8, TRAINING_LINKS["pcie3"], TRAINING_LINKS["100gbe"], 1),
]}


# --------------------------------------------------------------------------- YAML with positions
_DEVICE_KEYS = {"name", "description", "source", "peak_flops", "memory_bandwidth_bytes_per_s", "memory_bytes",
                "tdp_w", "tensor_precisions"}
_LINK_KEYS = {"name", "bytes_per_s", "latency_s", "source"}
_TOPOLOGY_KEYS = {"name", "devices_per_node", "intra_link", "inter_link", "nics_per_node"}
_TOP_KEYS = {"devices", "links", "topologies"}


@dataclass
class HardwareFile:
    """What one YAML hardware file adds: devices, links and topologies by name."""

    devices: dict[str, TrainingDevice] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    topologies: dict[str, Topology] = field(default_factory=dict)


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _scalar(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def _mapping(path: Path, node: yaml.Node, keys: set[str], what: str) -> dict[str, tuple[Any, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise HardwareError(f"{_where(path, node)}: {what} must be a mapping")
    out = {}
    for k, v in node.value:
        key = _scalar(k)
        if key not in keys:
            raise HardwareError(f"{_where(path, k)}: unknown key {key!r} in {what} (known: {', '.join(sorted(keys))})")
        out[key] = (v, k)
    return out


def _number(path: Path, entry: dict, key: str, what: str, allow_zero: bool = False, default: Any = None) -> float:
    if key not in entry:
        if default is not None:
            return default
        raise HardwareError(f"{path}: {what} lacks {key!r}")
    node = entry[key][0]
    return positive_number(_scalar(node), f"{what}: {key}", _where(path, node), allow_zero)


def _text(entry: dict, key: str, default: str) -> str:
    return str(_scalar(entry[key][0])) if key in entry else default


def load_hardware_file(path: str | os.PathLike, known_links: dict[str, Link] | None = None) -> HardwareFile:
    """Read devices, links and topologies from YAML::

        devices:
          - name: my-gpu
            peak_flops: {fp32: 2.0e13, fp16: 1.6e14}
            memory_bandwidth_bytes_per_s: 1.0e12
            memory_bytes: 3.2e10
            tdp_w: 300
            tensor_precisions: [fp16]      # optional
            source: vendor data sheet      # optional, as is description
        links:
          - {name: my-link, bytes_per_s: 5.0e10, latency_s: 5.0e-6}
        topologies:
          - {name: my-pod, devices_per_node: 4, intra_link: my-link, inter_link: ib-hdr, nics_per_node: 2}

    Args:
        path: the YAML file.
        known_links: links a topology may name besides the file's own (default: the table).

    Returns:
        The :class:`HardwareFile`.

    Raises:
        HardwareError: a missing file, bad YAML, an unknown key, a non-positive figure
            (negative bandwidth, zero devices per node), an unknown precision or link;
            the message names the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise HardwareError(f"{p}: no such file")
    try:
        root = yaml.compose(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise HardwareError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', None) or str(e).splitlines()[0]})") \
            from None
    if root is None:
        raise HardwareError(f"{p}: empty file (expected devices:, links: or topologies:)")
    top = _mapping(p, root, _TOP_KEYS, "the file")
    out = HardwareFile()
    links = dict(known_links if known_links is not None else TRAINING_LINKS)
    for section in ("devices", "links", "topologies"):
        if section not in top:
            continue
        node = top[section][0]
        if not isinstance(node, yaml.SequenceNode):
            raise HardwareError(f"{_where(p, node)}: {section} must be a list")
        if not node.value:
            raise HardwareError(f"{_where(p, node)}: {section} is empty (zero {section})")
        for item in node.value:
            keys = {"devices": _DEVICE_KEYS, "links": _LINK_KEYS, "topologies": _TOPOLOGY_KEYS}[section]
            e = _mapping(p, item, keys, section[:-1] if section != "topologies" else "topology")
            if "name" not in e:
                raise HardwareError(f"{_where(p, item)}: {section} entry lacks 'name'")
            name = _text(e, "name", "")
            what = f"{section[:-1] if section != 'topologies' else 'topology'} {name}"
            if section == "devices":
                peaks_node = e.get("peak_flops", (None,))[0]
                if not isinstance(peaks_node, yaml.MappingNode) or not peaks_node.value:
                    raise HardwareError(f"{_where(p, peaks_node or item)}: {what}: peak_flops must map precisions "
                                        f"({', '.join(TRAINING_PRECISIONS)}) to operations per second")
                peaks = _mapping(p, peaks_node, set(TRAINING_PRECISIONS), f"{what} peak_flops")
                tensor = _scalar(e["tensor_precisions"][0]) if "tensor_precisions" in e else []
                if not isinstance(tensor, list) or any(t not in peaks for t in tensor):
                    raise HardwareError(f"{_where(p, e['tensor_precisions'][0])}: {what}: tensor_precisions must "
                                        f"list precisions of peak_flops")
                out.devices[name] = TrainingDevice(
                    name, _text(e, "description", name), _text(e, "source", str(p)),
                    {k: _number(p, peaks, k, f"{what} peak_flops") for k in peaks},
                    _number(p, e, "memory_bandwidth_bytes_per_s", what), _number(p, e, "memory_bytes", what),
                    _number(p, e, "tdp_w", what), tuple(tensor))
            elif section == "links":
                link = Link(name, _number(p, e, "bytes_per_s", what),
                            _number(p, e, "latency_s", what, allow_zero=True), _text(e, "source", str(p)))
                out.links[name] = links[name] = link
            else:
                per_node = _number(p, e, "devices_per_node", what)
                nics = _number(p, e, "nics_per_node", what, default=1.0)
                if per_node != int(per_node) or nics != int(nics):
                    raise HardwareError(f"{_where(p, item)}: {what}: devices_per_node and nics_per_node must be "
                                        f"whole numbers")
                chosen = []
                for key in ("intra_link", "inter_link"):
                    if key not in e:
                        if key == "intra_link":
                            raise HardwareError(f"{_where(p, item)}: {what} lacks 'intra_link'")
                        chosen.append(None)
                        continue
                    lname = _text(e, key, "")
                    if lname not in links:
                        raise HardwareError(f"{_where(p, e[key][0])}: {what}: unknown link {lname!r} "
                                            f"(known: {', '.join(sorted(links))})")
                    chosen.append(links[lname])
                out.topologies[name] = Topology(name, int(per_node), chosen[0], chosen[1], int(nics))
    return out


# --------------------------------------------------------------------------- look-ups
def _split_file(name: str) -> tuple[str | None, str]:
    """``file.yaml:entry`` → (file, entry); a bare ``file.yaml`` → (file, "")."""
    for ext in (".yaml", ".yml"):
        i = name.find(ext)
        if i >= 0:
            rest = name[i + len(ext):]
            return name[:i + len(ext)], rest.removeprefix(":")
    return None, name


def _from_file(name: str, section: str, what: str):
    file, entry = _split_file(name)
    table = getattr(load_hardware_file(file), section)
    if not table:
        raise HardwareError(f"{file}: defines no {section}")
    if not entry:
        if len(table) > 1:
            raise HardwareError(f"{file}: defines {len(table)} {section}; name one as {file}:NAME")
        return next(iter(table.values()))
    if entry not in table:
        raise HardwareError(f"{file}: no {what} {entry!r} (it defines {', '.join(table)})")
    return table[entry]


def get_training_device(name: str) -> TrainingDevice:
    """A device of the table (``v100``, ``a100``, …, ``cpu``), ``cpu-probe`` (this CPU
    measured now, :func:`probe_cpu`), or ``FILE.yaml[:NAME]``.

    Raises:
        HardwareError: an unknown name or a bad file.
    """
    if name in TRAINING_DEVICES:
        return TRAINING_DEVICES[name]
    if name == "cpu-probe":
        probe = probe_cpu()
        base = TRAINING_DEVICES["cpu"]
        return TrainingDevice("cpu-probe", base.description, "probe_cpu() now: 1-thread fp32 matmul, 256 MiB copy",
                              {"fp32": probe["fp32_flops_per_s"]}, probe["memory_bandwidth_bytes_per_s"],
                              base.memory_bytes, base.tdp_w)
    if _split_file(name)[0]:
        return _from_file(name, "devices", "device")
    raise HardwareError(f"unknown device {name!r} (known: {', '.join(TRAINING_DEVICES)}, cpu-probe, or FILE.yaml)")


def get_link(name: str) -> Link:
    """A link of the table (``nvlink2``, ``ib-hdr``, …) or ``FILE.yaml[:NAME]``."""
    if name in TRAINING_LINKS:
        return TRAINING_LINKS[name]
    if _split_file(name)[0]:
        return _from_file(name, "links", "link")
    raise HardwareError(f"unknown link {name!r} (known: {', '.join(TRAINING_LINKS)}, or FILE.yaml)")


def get_topology(name: str) -> Topology:
    """A topology of the table (``dgx1``, ``dgx-a100``, …) or ``FILE.yaml[:NAME]``."""
    if name in TRAINING_TOPOLOGIES:
        return TRAINING_TOPOLOGIES[name]
    if _split_file(name)[0]:
        return _from_file(name, "topologies", "topology")
    raise HardwareError(f"unknown topology {name!r} (known: {', '.join(TRAINING_TOPOLOGIES)}, or FILE.yaml)")


# --------------------------------------------------------------------------- this CPU
def probe_cpu(matmul_n: int = 512, copy_bytes: int = 1 << 28, repeats: int = 5) -> dict[str, float]:
    """Measure this CPU: fp32 matmul FLOP/s and memory copy bandwidth (medians).

    FLOP/s: ``2·n³ / t`` of an ``n × n`` float32 ``numpy`` matmul (the BLAS the process
    uses, with its current thread count; set ``OMP_NUM_THREADS=1`` for one core).
    Bandwidth: ``2·bytes / t`` of copying a ``bytes``-sized array (read + write).

    Returns:
        ``{"fp32_flops_per_s", "memory_bandwidth_bytes_per_s"}``.
    """
    import numpy as np

    a = np.random.default_rng(0).standard_normal((matmul_n, matmul_n), dtype=np.float32)
    a @ a
    flops = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        flops.append(2 * matmul_n ** 3 / (time.perf_counter() - start))
    src = np.ones(copy_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    bandwidth = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        bandwidth.append(2 * copy_bytes / (time.perf_counter() - start))
    return {"fp32_flops_per_s": float(np.median(flops)), "memory_bandwidth_bytes_per_s": float(np.median(bandwidth))}
