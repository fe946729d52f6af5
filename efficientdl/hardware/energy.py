"""Energy and area of arithmetic and memory access: the lecture's 45 nm table.

Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC'14: at
45 nm and 0.9 V a 32-bit DRAM read costs 640 pJ — about 200× a 32-bit float multiply
and 6400× a 32-bit integer add.  That ratio is why compression that keeps weights on
chip saves more energy than it saves arithmetic.

Tables for other technology nodes can be loaded from YAML (:func:`load_table`) with
the same operation names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import EdlError


class HardwareError(EdlError):
    """An invalid hardware description (energy table, device, configuration)."""


#: The operation names of an energy table.
OPERATIONS = ("int8_add", "int16_add", "int32_add", "fp16_add", "fp32_add", "int8_mult", "int32_mult",
              "fp16_mult", "fp32_mult", "register_file_32b", "sram_read_32b", "dram_read_32b")


@dataclass(frozen=True)
class EnergyTable:
    """Energy (pJ) and, where known, area (µm²) per operation at one technology node.

    Attributes:
        name: e.g. ``"45nm"``.
        source: where the figures come from.
        energy_pj: operation → picojoules (memory entries are per 32-bit access).
        area_um2: operation → square micrometres (arithmetic units only).
    """

    name: str
    source: str
    energy_pj: dict[str, float]
    area_um2: dict[str, float] = field(default_factory=dict)

    def energy(self, operation: str) -> float:
        """Picojoules of one ``operation`` (one of :data:`OPERATIONS`)."""
        if operation not in self.energy_pj:
            raise HardwareError(f"energy table {self.name} has no entry for {operation!r}")
        return self.energy_pj[operation]

    def area(self, operation: str) -> float | None:
        """Square micrometres of the unit for ``operation``, or None when not known."""
        return self.area_um2.get(operation)

    def relative_cost(self, operation: str, reference: str = "int32_add") -> float:
        """Energy of ``operation`` in units of ``reference`` (the lecture's "relative cost" column)."""
        return self.energy(operation) / self.energy(reference)


HOROWITZ_45NM = EnergyTable(
    name="45nm",
    source="M. Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, 0.9 V); areas: TSMC 45 nm synthesis",
    energy_pj={"int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
               "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
               "register_file_32b": 1.0, "sram_read_32b": 5.0, "dram_read_32b": 640.0},
    area_um2={"int8_add": 36, "int16_add": 67, "int32_add": 137, "fp16_add": 1360, "fp32_add": 4184,
              "int8_mult": 282, "int32_mult": 3495, "fp16_mult": 1640, "fp32_mult": 7700},
)


def positive_number(value: Any, what: str, where: str, allow_zero: bool = False) -> float:
    """``value`` as a finite positive float (YAML may give ``4.0e12`` as a string), else HardwareError;
    with ``allow_zero``, 0 is accepted too."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    low_ok = (lambda n: n >= 0) if allow_zero else (lambda n: n > 0)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not (low_ok(number) and number < float("inf")):
        expected = "a number ≥ 0" if allow_zero else "a positive number"
        raise HardwareError(f"{where}: {what} must be {expected}, got {value!r}")
    return float(number)


def read_yaml_mapping(path: str | Path, keys: set[str]) -> tuple[Path, dict]:
    """``(path, mapping)`` of a YAML file whose top level is a mapping with only ``keys``.

    Raises:
        HardwareError: a missing file, bad YAML, not a mapping, or an unknown key.
    """
    p = Path(path)
    if not p.is_file():
        raise HardwareError(f"{p}: no such file")
    try:
        d = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HardwareError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise HardwareError(f"{p}: expected a mapping")
    unknown = set(d) - keys
    if unknown:
        raise HardwareError(f"{p}: unknown key {sorted(unknown)[0]!r}")
    return p, d


def load_table(path: str | Path) -> EnergyTable:
    """Read an energy table from YAML.

    The file has ``name``, ``source``, ``energy_pj`` (a mapping with every name of
    :data:`OPERATIONS`) and optionally ``area_um2``.

    Raises:
        HardwareError: missing file, bad YAML, an unknown or missing operation, a
            non-positive figure (one line naming the problem).
    """
    p, d = read_yaml_mapping(path, {"name", "source", "energy_pj", "area_um2"})
    if not isinstance(d.get("energy_pj"), dict):
        raise HardwareError(f"{p}: expected a mapping with an 'energy_pj' mapping")
    energy, area = {}, {}
    for key, table, out in (("energy_pj", d["energy_pj"], energy), ("area_um2", d.get("area_um2") or {}, area)):
        if not isinstance(table, dict):
            raise HardwareError(f"{p}: '{key}' must be a mapping")
        for op, v in table.items():
            if op not in OPERATIONS:
                raise HardwareError(f"{p}: {key}: unknown operation {op!r} (known: {', '.join(OPERATIONS)})")
            out[op] = positive_number(v, f"{key}.{op}", str(p))
    missing = [op for op in OPERATIONS if op not in energy]
    if missing:
        raise HardwareError(f"{p}: energy_pj lacks {missing[0]!r}")
    return EnergyTable(str(d.get("name", p.stem)), str(d.get("source", str(p))), energy, area)


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy of one inference (per sample), split as in the lecture's energy argument.

    Attributes:
        arithmetic_pj: multiplies and adds of the MACs performed.
        on_chip_pj: SRAM reads of weights (when they fit on chip) and activation reads/writes.
        dram_pj: DRAM reads of the weights (when they do not fit on chip), shared by the batch.
        weights_on_chip: whether all weights fit the on-chip memory.
    """

    arithmetic_pj: float
    on_chip_pj: float
    dram_pj: float
    weights_on_chip: bool

    @property
    def total_pj(self) -> float:
        return self.arithmetic_pj + self.on_chip_pj + self.dram_pj

    def to_dict(self) -> dict:
        return {"arithmetic_pj": self.arithmetic_pj, "on_chip_pj": self.on_chip_pj, "dram_pj": self.dram_pj,
                "total_pj": self.total_pj, "weights_on_chip": self.weights_on_chip}


def inference_energy(layers, batch: int = 1, on_chip_bytes: float = 1 << 20, arithmetic: str = "fp32",
                     table: EnergyTable = HOROWITZ_45NM, skip_zeros: bool = False) -> EnergyBreakdown:
    """Energy per sample of running ``layers`` at a batch size.

    Model (one 32-bit access = one table entry; a weight stream of ``b`` bits costs
    ``b / 32`` accesses):

    * arithmetic: ``MACs × (E_mult + E_add)`` in the ``arithmetic`` format, where MACs
      are the dense count, or with ``skip_zeros`` only those on nonzero weights (and
      nonzero activations of fc layers) — what a sparse engine does;
    * weights: read once per batch — from SRAM (``sram_read_32b``) when the whole
      model's stored weights fit ``on_chip_bytes``, else from DRAM (``dram_read_32b``);
      divided by the batch;
    * activations: each input and output activation read or written once from SRAM.

    Args:
        layers: :class:`~efficientdl.hardware.workload.LayerWorkload` list.
        batch: samples sharing one fetch of the weights (≥ 1).
        on_chip_bytes: on-chip memory available for weights.
        arithmetic: ``"fp32"``, ``"fp16"``, ``"int32"`` or ``"int8"`` (a format of the table).
        table: the energy table.
        skip_zeros: count only the useful MACs.

    Returns:
        The :class:`EnergyBreakdown`, per sample.
    """
    if batch < 1:
        raise HardwareError(f"batch must be ≥ 1, got {batch}")
    if not on_chip_bytes >= 0:
        raise HardwareError(f"on-chip memory must be ≥ 0 bytes, got {on_chip_bytes}")
    mac_pj = table.energy(f"{arithmetic}_mult") + table.energy(f"{arithmetic}_add")
    weight_bytes = sum(layer.weight_bytes for layer in layers)
    fits = weight_bytes <= on_chip_bytes
    macs = sum(layer.effective_macs if skip_zeros else layer.macs for layer in layers)
    weight_pj = weight_bytes / 4 * table.energy("sram_read_32b" if fits else "dram_read_32b") / batch
    act_pj = sum((layer.input_elements + layer.output_elements) * layer.activation_bits / 32 for layer in layers) \
        * table.energy("sram_read_32b")
    return EnergyBreakdown(macs * mac_pj, act_pj + (weight_pj if fits else 0.0), 0.0 if fits else weight_pj, fits)
