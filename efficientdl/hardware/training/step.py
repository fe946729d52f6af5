"""The time and memory of one training step on one device: per-layer rooflines.

For a :class:`~efficientdl.hardware.workload.TrainingWorkload`, a batch ``b`` per device,
a precision and an optimizer, every layer has three phases (the standard accounting,
e.g. Kaplan et al. 2020 "6·N FLOPs per token"; Narayanan et al. SC'21):

* forward: ``2·MACs·b`` FLOPs (a multiply-accumulate is two operations);
* backward-data (the input gradient ``dX = dY·Wᵀ``): ``2·MACs·b``; none for a layer whose
  input is the network input (the first layer);
* backward-weight (``dW = Xᵀ·dY``): ``2·MACs·b``;

so a weighted layer costs 3× its forward FLOPs (2× in the first layer).  Bytes moved
per phase (``a``, ``w``, ``g`` bytes per activation, weight, gradient of the precision;
``I``, ``O`` input and output elements):

* forward: ``W·w + b·(I + O)·a`` (read weights and input, write output);
* backward-data: ``W·w + b·(O + I)·a`` (read weights and output gradient, write input gradient);
* backward-weight: ``b·(O + I)·a + W·g`` (read output gradient and saved input, write dW);
* elementwise layers, each element a read or write: batch norm 2 reads + 1 write
  forward (statistics pass, normalising pass), 5 backward (two passes over ``x`` and
  ``dY``, one write of ``dX``); activations 2 / 3; residual additions 3 / 3 (the gradient
  sum where the branches meet); pooling and others ``I + O`` both ways.

Each phase sits under the device roofline for its precision (Williams, Waterman,
Patterson, CACM 2009)::

    time = max(FLOPs / (peak · achieved_fraction), bytes / bandwidth) + layout_bytes / bandwidth

and names its bound.  ``layout_bytes`` is the memory layout's cost.  Tensor cores compute
convolutions on channels-last (NHWC) tensors, so cuDNN runs a tensor-core convolution on
PyTorch's default NCHW tensors with transposes around it (NVIDIA Deep Learning
Performance documentation, "Convolutional Layers User's Guide", tensor layouts in
memory; what ``torch.channels_last`` removes).  Each phase then reads and writes its two
operands and its result once more, ``2·(b·(I + O)·a + W·w)`` bytes, in memory-bound
kernels of their own.  With ``memory_format="nhwc"``, and on CUDA cores or CPUs (which
compute NCHW natively), there are none.

The optimizer step is one more memory-bound phase: SGD with momentum reads the gradient,
reads and writes the (master) weights and one state; Adam two states; mixed precision
also writes the 16-bit copy of the weights.  The step time is the sum of all phases (one
device, nothing overlaps).

Precisions (activations / weights used in compute / fp32 master / gradients, bytes):
fp32 4/4/–/4, tf32 4/4/–/4 (tensor-core math on fp32 storage), fp16 and bf16 mixed
2/2/4/2 with fp32 master weights and fp32 optimizer states (Micikevicius et al.,
"Mixed precision training", ICLR'18; the memory accounting of Rajbhandari et al.,
"ZeRO", SC'20: 16 bytes per parameter with Adam), int8 1/1/4/2.

The achieved fraction: compute rarely reaches the data-sheet peak.  Defaults are
:data:`DEFAULT_ACHIEVED_FRACTION` (a round prior, *not* a measurement) for CUDA-core /
vector precisions, and for matrix-unit (tensor-core) precisions that value times
:data:`TENSOR_CORE_RATIO`.  :func:`calibrate_fraction` fits the factor from one measured
throughput, and :func:`carry_fraction` moves a fitted factor to another precision with
the same ratio.  Every report names the factor and where it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..energy import HardwareError
from ..workload import TrainingLayer, TrainingWorkload
from .devices import TrainingDevice

#: the achieved fraction of peak FLOP/s for CUDA-core / vector precisions when nothing is fitted (a prior)
DEFAULT_ACHIEVED_FRACTION = 0.5
#: achieved fraction on tensor cores / achieved fraction on CUDA-core fp32.  From the lecture: "Tesla V100
#: tensor cores and CUDA 9 deliver up to 9× higher performance for GEMM operations" than P100 (fp32): if both
#: fp32 GEMMs reach the same fraction of their peaks, the tensor-core GEMM reaches 9 × 10.6 / 125 = 0.763 of
#: that fraction of its own peak.
TENSOR_CORE_RATIO = 9 * 10.6 / 125
#: the share of device memory a training process can use (runtime context, workspaces, fragmentation: 5%)
USABLE_MEMORY_FRACTION = 0.95
#: activation memory layouts: PyTorch's default (channels first) and ``torch.channels_last``
MEMORY_FORMATS = ("nchw", "nhwc")


@dataclass(frozen=True)
class Precision:
    """Byte widths and arithmetic of a training precision.

    Attributes:
        name: ``fp32``, ``tf32``, ``fp16``, ``bf16`` or ``int8``.
        compute: the peak of the device table used for weighted layers.
        activation_bytes: bytes per activation (and activation gradient).
        weight_bytes: bytes per weight used in compute.
        master_bytes: bytes per fp32 master weight (0 when the weights are fp32 already).
        gradient_bytes: bytes per weight gradient (what data parallelism all-reduces).
        description: one line.
    """

    name: str
    compute: str
    activation_bytes: int
    weight_bytes: int
    master_bytes: int
    gradient_bytes: int
    description: str


PRECISIONS = {p.name: p for p in [
    Precision("fp32", "fp32", 4, 4, 0, 4, "fp32 everywhere"),
    Precision("tf32", "tf32", 4, 4, 0, 4, "fp32 storage, TF32 tensor-core math"),
    Precision("fp16", "fp16", 2, 2, 4, 2, "mixed: fp16 compute and activations, fp32 master weights and states"),
    Precision("bf16", "bf16", 2, 2, 4, 2, "mixed: bf16 compute and activations, fp32 master weights and states"),
    Precision("int8", "int8", 1, 1, 4, 2, "int8 compute and activations, fp16 gradients, fp32 master weights"),
]}
#: other names accepted for a precision
PRECISION_ALIASES = {"mixed": "fp16", "amp": "fp16"}


@dataclass(frozen=True)
class Optimizer:
    """An optimizer's per-parameter state and work.

    Attributes:
        name: ``sgd`` (with momentum) or ``adam``.
        states: fp32 state tensors per parameter (momentum; Adam's first and second moments).
        flops_per_param: arithmetic of one update per parameter.
    """

    name: str
    states: int
    flops_per_param: int


OPTIMIZERS = {"sgd": Optimizer("sgd", 1, 4), "adam": Optimizer("adam", 2, 12)}


def get_precision(name: str) -> Precision:
    """The :class:`Precision` called ``name`` (``mixed`` = ``fp16``)."""
    key = PRECISION_ALIASES.get(name, name)
    if key not in PRECISIONS:
        raise HardwareError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)}, mixed)")
    return PRECISIONS[key]


def get_optimizer(name: str) -> Optimizer:
    """The :class:`Optimizer` called ``name``."""
    if name not in OPTIMIZERS:
        raise HardwareError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name]


def _on_matrix_units(device: TrainingDevice, precision: str) -> bool:
    return precision in device.tensor_precisions


def default_fraction(device: TrainingDevice, precision: str) -> tuple[float, str]:
    """``(achieved fraction, where it comes from)`` when nothing is fitted."""
    p = get_precision(precision).compute
    if _on_matrix_units(device, p) and not _on_matrix_units(device, "fp32") and "fp32" in device.peak_flops:
        return (DEFAULT_ACHIEVED_FRACTION * TENSOR_CORE_RATIO,
                f"default {DEFAULT_ACHIEVED_FRACTION} × tensor-core ratio {TENSOR_CORE_RATIO:.3f}")
    return DEFAULT_ACHIEVED_FRACTION, f"default {DEFAULT_ACHIEVED_FRACTION}"


def carry_fraction(device: TrainingDevice, fraction: float, from_precision: str, to_precision: str) -> float:
    """Move an achieved fraction fitted at one precision to another.

    Between two precisions on the same kind of unit (both CUDA-core, or both tensor-core,
    e.g. TF32 → fp16 on A100) the fraction is unchanged; from a CUDA-core to a tensor-core
    precision it is multiplied by :data:`TENSOR_CORE_RATIO` (divided the other way, at most 1).
    """
    a = _on_matrix_units(device, get_precision(from_precision).compute)
    b = _on_matrix_units(device, get_precision(to_precision).compute)
    if a == b:
        return fraction
    return fraction * TENSOR_CORE_RATIO if b else min(1.0, fraction / TENSOR_CORE_RATIO)


# --------------------------------------------------------------------------- per-layer costs
@dataclass(frozen=True)
class PhaseCost:
    """One phase of one layer under the roofline.

    Attributes:
        flops: operations of the phase for the whole batch.
        bytes: bytes read and written from device memory.
        time_s: ``max(flops / attained peak, bytes / bandwidth)``.
        bound: ``"compute"`` or ``"memory"`` (``"none"`` for an empty phase).
    """

    flops: float
    bytes: float
    time_s: float
    bound: str
    layout_bytes: float = 0.0
    layout_s: float = 0.0

    def to_dict(self) -> dict:
        return {"flops": self.flops, "bytes": self.bytes, "time_s": self.time_s, "bound": self.bound,
                "layout_bytes": self.layout_bytes, "layout_s": self.layout_s}


def phase_cost(flops: float, size_bytes: float, peak_flops_per_s: float, fraction: float,
               bandwidth_bytes_per_s: float, layout_bytes: float = 0.0) -> PhaseCost:
    """Roofline time of one phase.

    ``time = max(flops / (peak · fraction), bytes / bandwidth) + layout_bytes / bandwidth``:
    the layout transposes (see the module docstring) are kernels of their own, after the
    product's, so their time adds.  The bound is the one most of the time is spent under:
    ``compute`` when the compute time exceeds the memory time, transposes included.

    Args:
        flops: operations; size_bytes: bytes the phase's own kernel moves.
        peak_flops_per_s, fraction: the device's peak for the precision, and its achieved fraction.
        bandwidth_bytes_per_s: the device's memory bandwidth.
        layout_bytes: bytes the layout transposes read and write (0: none).

    Returns:
        The :class:`PhaseCost`; ``bytes`` and ``time_s`` count the transposes too
        (``layout_bytes``, ``layout_s``).
    """
    if flops <= 0 and size_bytes <= 0:
        return PhaseCost(0.0, 0.0, 0.0, "none")
    compute = flops / (peak_flops_per_s * fraction)
    memory = size_bytes / bandwidth_bytes_per_s
    layout = layout_bytes / bandwidth_bytes_per_s
    bound = "compute" if compute >= memory + layout else "memory"
    return PhaseCost(float(flops), float(size_bytes + layout_bytes), max(compute, memory) + layout, bound,
                     float(layout_bytes), layout)


@dataclass(frozen=True)
class LayerCost:
    """A layer's forward, backward-data and backward-weight phases.

    Attributes:
        name, kind, group: from the workload.
        params: trainable parameters (their gradients are all-reduced).
        forward, backward_data, backward_weight: the :class:`PhaseCost` of each phase.
    """

    name: str
    kind: str
    group: str
    params: int
    forward: PhaseCost
    backward_data: PhaseCost
    backward_weight: PhaseCost

    @property
    def phases(self) -> tuple[PhaseCost, PhaseCost, PhaseCost]:
        return self.forward, self.backward_data, self.backward_weight

    @property
    def time_s(self) -> float:
        return sum(p.time_s for p in self.phases)

    @property
    def backward_s(self) -> float:
        return self.backward_data.time_s + self.backward_weight.time_s

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.phases)

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.phases)

    @property
    def compute_bound_s(self) -> float:
        """Time of the phases that are compute-bound."""
        return sum(p.time_s for p in self.phases if p.bound == "compute")

    @property
    def bound(self) -> str:
        """The bound of the layer: the one that most of its time is spent under."""
        return "compute" if self.compute_bound_s >= self.time_s - self.compute_bound_s else "memory"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "group": self.group, "params": self.params,
                "forward": self.forward.to_dict(), "backward_data": self.backward_data.to_dict(),
                "backward_weight": self.backward_weight.to_dict(), "time_s": self.time_s, "flops": self.flops,
                "bytes": self.bytes, "bound": self.bound}


_ELEMENTWISE_ACCESSES = {          # kind: (forward reads of the input, forward writes, backward accesses per output)
    "norm": (2, 1, 5), "act": (1, 1, 3), "add": (1, 1, 3), "pool": (1, 1, 2), "other": (1, 1, 2),
}
_ELEMENTWISE_FLOPS = {"norm": (5, 8), "act": (1, 1), "add": (1, 1), "pool": (1, 1), "other": (1, 1)}


def layout_transposes(layer: TrainingLayer, device: TrainingDevice, precision: Precision,
                      memory_format: str) -> bool:
    """Whether ``layer`` pays layout transposes: a convolution on the device's tensor cores
    (matrix units) with NCHW tensors (see the module docstring)."""
    if memory_format not in MEMORY_FORMATS:
        raise HardwareError(f"unknown memory format {memory_format!r} (known: {', '.join(MEMORY_FORMATS)})")
    return memory_format == "nchw" and layer.kind == "conv" and _on_matrix_units(device, precision.compute)


def layer_cost(layer: TrainingLayer, batch: int, device: TrainingDevice, precision: Precision,
               fraction: float, memory_format: str = "nchw") -> LayerCost:
    """The three phases of ``layer`` at ``batch`` samples (see the module docstring);
    ``memory_format`` (``nchw`` or ``nhwc``) decides the layout transposes of convolutions
    on tensor cores."""
    a, w, g = precision.activation_bytes, precision.weight_bytes, precision.gradient_bytes
    bw = device.memory_bandwidth_bytes_per_s
    i, o = layer.input_elements * batch, layer.output_elements * batch
    if layer.weighted:
        peak = device.peak(precision.compute)
        f = 2.0 * layer.macs * batch
        # each phase's two operands and its result, read and written once more (weights: w, or g for dW)
        t = layout_transposes(layer, device, precision, memory_format)
        t_w = 2.0 * ((i + o) * a + layer.params * w) if t else 0.0
        t_g = 2.0 * ((i + o) * a + layer.params * g) if t else 0.0
        fwd = phase_cost(f, layer.params * w + (i + o) * a, peak, fraction, bw, t_w)
        bwd_d = phase_cost(f, layer.params * w + (o + i) * a, peak, fraction, bw, t_w) if layer.needs_input_grad \
            else PhaseCost(0.0, 0.0, 0.0, "none")
        bwd_w = phase_cost(f, (o + i) * a + layer.params * g, peak, fraction, bw, t_g)
    else:
        peak = device.vector_peak_flops
        reads, writes, back = _ELEMENTWISE_ACCESSES.get(layer.kind, _ELEMENTWISE_ACCESSES["other"])
        ff, fb = _ELEMENTWISE_FLOPS.get(layer.kind, _ELEMENTWISE_FLOPS["other"])
        if layer.kind in ("pool", "other"):
            fwd_bytes, bwd_bytes = (i + o) * a, (i + o) * a
        elif layer.kind == "add":
            fwd_bytes, bwd_bytes = (i + o) * a, back * o * a
        else:
            fwd_bytes, bwd_bytes = (reads * i + writes * o) * a, back * o * a
        fwd = phase_cost(ff * o, fwd_bytes, peak, fraction, bw)
        bwd_d = phase_cost(fb * o, bwd_bytes, peak, fraction, bw) if layer.needs_input_grad \
            else PhaseCost(0.0, 0.0, 0.0, "none")
        bwd_w = PhaseCost(0.0, 0.0, 0.0, "none")
    return LayerCost(layer.name, layer.kind, layer.group, layer.params, fwd, bwd_d, bwd_w)


def optimizer_cost(params: int, device: TrainingDevice, precision: Precision, optimizer: Optimizer,
                   fraction: float) -> PhaseCost:
    """The optimizer step: ``params · flops_per_param`` FLOPs over
    ``params · (g + 2·m + 8·states + w_copy)`` bytes, with ``g`` the gradient bytes, ``m`` the
    master (or fp32) weight bytes, 4-byte states read and written, and the 16-bit copy
    written under mixed precision."""
    master = precision.master_bytes or precision.weight_bytes
    copy = precision.weight_bytes if precision.master_bytes else 0
    per_param = precision.gradient_bytes + 2 * master + 8 * optimizer.states + copy
    return phase_cost(params * optimizer.flops_per_param, params * per_param, device.vector_peak_flops, fraction,
                      device.memory_bandwidth_bytes_per_s)


@dataclass(frozen=True)
class StepBreakdown:
    """One training step on one device.

    Attributes:
        workload, device, precision, optimizer: names.
        batch: samples per device.
        achieved_fraction: the factor on the peak FLOP/s; fraction_source says where it came from.
        layers: the :class:`LayerCost` of every layer, forward order.
        optimizer_step: the optimizer's :class:`PhaseCost`.
        recompute_s: the extra forward pass of activation checkpointing (0 without).
        checkpointing: whether activations are checkpointed.
        gradient_bytes: bytes of all weight gradients (what data parallelism all-reduces).
        memory_format: ``nchw`` or ``nhwc``, the activations' layout.
    """

    workload: str
    device: str
    precision: str
    optimizer: str
    batch: int
    achieved_fraction: float
    fraction_source: str
    layers: tuple[LayerCost, ...]
    optimizer_step: PhaseCost
    recompute_s: float
    checkpointing: bool
    gradient_bytes: float
    gradient_bytes_per_param: int = field(default=4)
    memory_format: str = "nchw"

    @property
    def forward_s(self) -> float:
        return sum(layer.forward.time_s for layer in self.layers)

    @property
    def backward_s(self) -> float:
        """Backward time, the recomputed forward of checkpointing included."""
        return sum(layer.backward_s for layer in self.layers) + self.recompute_s

    @property
    def step_time_s(self) -> float:
        return self.forward_s + self.backward_s + self.optimizer_step.time_s

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_time_s

    @property
    def layout_s(self) -> float:
        """Time of the layout transposes (NCHW convolutions on tensor cores), part of the step."""
        return sum(p.layout_s for layer in self.layers for p in layer.phases)

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers) + self.optimizer_step.flops

    @property
    def bytes(self) -> float:
        return sum(layer.bytes for layer in self.layers) + self.optimizer_step.bytes

    def group_times(self) -> dict[str, dict[str, float]]:
        """``{group: {"compute_s", "memory_s"}}``: time under each bound, per layer group."""
        out: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            d = out.setdefault(layer.group, {"compute_s": 0.0, "memory_s": 0.0})
            d["compute_s"] += layer.compute_bound_s
            d["memory_s"] += layer.time_s - layer.compute_bound_s
        d = out.setdefault("optimizer", {"compute_s": 0.0, "memory_s": 0.0})
        d["compute_s" if self.optimizer_step.bound == "compute" else "memory_s"] += self.optimizer_step.time_s
        if self.recompute_s:
            out["recompute"] = {"compute_s": self.recompute_s, "memory_s": 0.0}
        return out

    def to_dict(self) -> dict:
        return {"workload": self.workload, "device": self.device, "precision": self.precision,
                "optimizer": self.optimizer, "batch": self.batch, "achieved_fraction": self.achieved_fraction,
                "fraction_source": self.fraction_source, "checkpointing": self.checkpointing,
                "memory_format": self.memory_format, "layout_s": self.layout_s,
                "forward_s": self.forward_s, "backward_s": self.backward_s,
                "optimizer_s": self.optimizer_step.time_s, "recompute_s": self.recompute_s,
                "step_time_s": self.step_time_s, "samples_per_s": self.samples_per_s, "flops": self.flops,
                "bytes": self.bytes, "gradient_bytes": self.gradient_bytes, "group_times": self.group_times(),
                "layers": [layer.to_dict() for layer in self.layers]}


def _check_workload(workload: TrainingWorkload) -> None:
    if not any(layer.weighted for layer in workload.layers):
        raise HardwareError(f"model {workload.name} has no weighted layer (conv, fc, lstm, attention): "
                            f"nothing to train")


def training_step(workload: TrainingWorkload, device: TrainingDevice, batch: int, precision: str = "fp32",
                  optimizer: str = "sgd", achieved_fraction: float | None = None,
                  fraction_source: str | None = None, checkpointing: bool = False,
                  memory_format: str = "nchw") -> StepBreakdown:
    """Time one training step of ``workload`` on one ``device`` (see the module docstring).

    Args:
        workload: the network.
        device: the device.
        batch: samples per device (≥ 1).
        precision: ``fp32``, ``tf32``, ``fp16``/``mixed``, ``bf16`` or ``int8``.
        optimizer: ``sgd`` (momentum) or ``adam``.
        achieved_fraction: factor on the peak FLOP/s (default: :func:`default_fraction`).
        fraction_source: where the factor comes from (for the report).
        checkpointing: recompute activations (one extra forward pass; Chen et al. 2016).
        memory_format: ``nchw`` (PyTorch's default) or ``nhwc`` (``torch.channels_last``):
            with ``nchw`` convolutions on tensor cores pay layout transposes.

    Returns:
        The :class:`StepBreakdown`.

    Raises:
        HardwareError: a batch < 1, a precision the device lacks, a fraction outside
            (0, 1], an unknown memory format, or a model without weighted layers.
    """
    _check_workload(workload)
    if batch < 1:
        raise HardwareError(f"batch must be ≥ 1, got {batch}")
    if memory_format not in MEMORY_FORMATS:
        raise HardwareError(f"unknown memory format {memory_format!r} (known: {', '.join(MEMORY_FORMATS)})")
    p, opt = get_precision(precision), get_optimizer(optimizer)
    device.peak(p.compute)
    if achieved_fraction is None:
        achieved_fraction, source = default_fraction(device, p.name)
        fraction_source = fraction_source or source
    if not 0 < achieved_fraction <= 1:
        raise HardwareError(f"achieved fraction must be in (0, 1], got {achieved_fraction}")
    layers = tuple(layer_cost(layer, batch, device, p, achieved_fraction, memory_format) for layer in workload.layers)
    opt_cost = optimizer_cost(workload.params, device, p, opt, achieved_fraction)
    recompute = sum(c.forward.time_s for c in layers) if checkpointing else 0.0
    return StepBreakdown(workload.name, device.name, p.name, opt.name, batch, achieved_fraction,
                         fraction_source or "given", layers, opt_cost, recompute, checkpointing,
                         float(workload.params * p.gradient_bytes), p.gradient_bytes, memory_format)


def calibrate_fraction(workload: TrainingWorkload, device: TrainingDevice, batch: int, measured_samples_per_s: float,
                       precision: str = "fp32", optimizer: str = "sgd", checkpointing: bool = False,
                       memory_format: str = "nchw") -> float:
    """The achieved fraction at which :func:`training_step` reproduces a measured throughput.

    The predicted throughput rises monotonically with the fraction; bisection (60 halvings)
    on (0, 1] finds the one that matches.

    Args:
        measured_samples_per_s: one measured figure on one device at this batch and precision.
        memory_format: the layout the measured run used (see :func:`training_step`).

    Returns:
        The fraction.

    Raises:
        HardwareError: the measurement is faster than the roofline allows even at fraction 1
            (the memory-bound layers alone take longer), or not positive.
    """
    if not measured_samples_per_s > 0:
        raise HardwareError(f"measured throughput must be positive, got {measured_samples_per_s}")

    def rate(f: float) -> float:
        return training_step(workload, device, batch, precision, optimizer, f, "fit", checkpointing,
                             memory_format).samples_per_s

    best = rate(1.0)
    if measured_samples_per_s > best * (1 + 1e-9):
        raise HardwareError(f"measured {measured_samples_per_s:.4g} samples/s on {device.name} is faster than the "
                            f"roofline allows at fraction 1 ({best:.4g}); check the device's figures")
    lo, hi = 1e-6, 1.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if rate(mid) < measured_samples_per_s:
            lo = mid
        else:
            hi = mid
    return hi


# --------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes one device holds during a training step.

    Attributes:
        weights_bytes: weights used in compute (the 16-bit copy under mixed precision).
        gradients_bytes: weight gradients.
        master_weights_bytes: fp32 master weights (0 in fp32/tf32).
        optimizer_state_bytes: momentum (SGD) or first and second moments (Adam), fp32.
        activations_bytes: activations saved for the backward pass at the batch.
        batch: samples per device.
        checkpointing: whether activations are checkpointed; segments: how many.
        capacity_bytes: the device's memory (None when no device was given).
    """

    weights_bytes: float
    gradients_bytes: float
    master_weights_bytes: float
    optimizer_state_bytes: float
    activations_bytes: float
    batch: int
    checkpointing: bool
    segments: int
    capacity_bytes: float | None = None

    @property
    def static_bytes(self) -> float:
        """Everything but the activations (independent of the batch)."""
        return self.weights_bytes + self.gradients_bytes + self.master_weights_bytes + self.optimizer_state_bytes

    @property
    def total_bytes(self) -> float:
        return self.static_bytes + self.activations_bytes

    @property
    def usable_bytes(self) -> float | None:
        return None if self.capacity_bytes is None else self.capacity_bytes * USABLE_MEMORY_FRACTION

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.total_bytes <= self.usable_bytes

    def to_dict(self) -> dict:
        return {"weights_bytes": self.weights_bytes, "gradients_bytes": self.gradients_bytes,
                "master_weights_bytes": self.master_weights_bytes, "optimizer_state_bytes": self.optimizer_state_bytes,
                "activations_bytes": self.activations_bytes, "static_bytes": self.static_bytes,
                "total_bytes": self.total_bytes, "batch": self.batch, "checkpointing": self.checkpointing,
                "segments": self.segments, "capacity_bytes": self.capacity_bytes, "usable_bytes": self.usable_bytes,
                "fits": self.fits}


def checkpoint_segments(layers: int) -> int:
    """Segments of activation checkpointing: ``ceil(sqrt(L))`` (Chen, Xu, Zhang, Guestrin,
    "Training deep nets with sublinear memory cost", 2016)."""
    return max(1, math.ceil(math.sqrt(layers)))


def activation_elements_per_sample(workload: TrainingWorkload, checkpointing: bool = False) -> int:
    """Activation elements held for the backward pass, per sample.

    Without checkpointing: the sum of the layers' saved elements.  With it (``k`` =
    :func:`checkpoint_segments` contiguous segments of about ``L/k`` layers): the input of
    every segment (the checkpoints) plus the saved activations of the largest segment,
    recomputed one segment at a time during the backward pass.
    """
    layers = workload.layers
    if not checkpointing:
        return sum(layer.saved_elements for layer in layers)
    k = checkpoint_segments(len(layers))
    size = math.ceil(len(layers) / k)
    segments = [layers[s:s + size] for s in range(0, len(layers), size)]
    return sum(seg[0].input_elements for seg in segments) + max(sum(x.saved_elements for x in seg) for seg in segments)


def memory_footprint(workload: TrainingWorkload, batch: int, precision: str = "fp32", optimizer: str = "sgd",
                     checkpointing: bool = False, device: TrainingDevice | None = None) -> MemoryFootprint:
    """The per-device memory of training ``workload`` at ``batch`` samples.

    ``params·w`` weights, ``params·g`` gradients, ``params·4`` master weights (mixed
    precision), ``params·4·states`` optimizer states and
    ``batch · a · activation_elements_per_sample`` activations (see :class:`Precision`).
    """
    p, opt = get_precision(precision), get_optimizer(optimizer)
    n = workload.params
    return MemoryFootprint(float(n * p.weight_bytes), float(n * p.gradient_bytes), float(n * p.master_bytes),
                           float(n * 4 * opt.states),
                           float(batch * p.activation_bytes * activation_elements_per_sample(workload, checkpointing)),
                           batch, checkpointing, checkpoint_segments(len(workload.layers)) if checkpointing else 1,
                           device.memory_bytes if device is not None else None)


def largest_batch(workload: TrainingWorkload, device: TrainingDevice, precision: str = "fp32",
                  optimizer: str = "sgd", checkpointing: bool = False) -> int:
    """The largest batch whose footprint fits the device's usable memory (0: none fits)."""
    one = memory_footprint(workload, 1, precision, optimizer, checkpointing, device)
    per_sample = one.activations_bytes
    room = one.usable_bytes - one.static_bytes
    if room < per_sample:
        return 0
    return int(room // per_sample) if per_sample > 0 else 1 << 30


def check_fits(workload: TrainingWorkload, device: TrainingDevice, batch: int, precision: str = "fp32",
               optimizer: str = "sgd", checkpointing: bool = False) -> MemoryFootprint:
    """The footprint, or a one-line :class:`HardwareError` when it does not fit the device."""
    fp = memory_footprint(workload, batch, precision, optimizer, checkpointing, device)
    if fp.fits:
        return fp
    gb = 1e9
    best = largest_batch(workload, device, precision, optimizer, checkpointing)
    if best == 0:
        raise HardwareError(f"{workload.name} cannot train on {device.name} in {get_precision(precision).name}: "
                            f"weights, gradients and optimizer states alone take {fp.static_bytes / gb:.2f} GB "
                            f"of {fp.usable_bytes / gb:.2f} GB usable")
    hint = "" if checkpointing else "; activation checkpointing would allow " + \
        str(largest_batch(workload, device, precision, optimizer, True))
    raise HardwareError(f"batch {batch} of {workload.name} needs {fp.total_bytes / gb:.2f} GB on {device.name} "
                        f"({fp.usable_bytes / gb:.2f} GB usable); the largest batch that fits is {best}{hint}")
