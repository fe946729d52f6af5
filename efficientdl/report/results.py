"""Results as data: per-layer and per-stage records that render to tables, JSON and plots."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerRecord:
    """Size of one parameter tensor in one stage's encoding.

    Attributes:
        name: parameter name (``fc1.weight``).
        weights: number of elements of the tensor.
        nonzero: number of nonzero elements.
        kind: storage kind in the file (``dense``, ``sparse`` or ``shared``).
        weight_bits: bits of a stored value (32 for fp32, ``b`` for a shared-weight index).
        index_bits: bits of a relative index, ``None`` for dense storage.
        entries: stored entries including padding fillers (sparse/shared kinds).
        size_bytes: bytes this tensor takes in the encoding (codebook and tables included).
        weight_bits_huffman: average coded bits per stored value after Huffman coding.
        index_bits_huffman: average coded bits per relative index after Huffman coding.
    """

    name: str
    weights: int
    nonzero: int
    kind: str
    weight_bits: float
    index_bits: int | None
    entries: int
    size_bytes: int
    weight_bits_huffman: float | None = None
    index_bits_huffman: float | None = None

    @property
    def density(self) -> float:
        """Fraction of nonzero weights."""
        return self.nonzero / self.weights if self.weights else 0.0

    @property
    def ratio(self) -> float:
        """fp32 bytes of the tensor divided by its encoded bytes."""
        return 4 * self.weights / self.size_bytes if self.size_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["density"] = self.density
        d["ratio"] = self.ratio
        return d


@dataclass
class StageReport:
    """What one stage of the pipeline did to size and accuracy.

    Attributes:
        stage: stage name (``dense``, ``prune``, ``quantize``, ``huffman``).
        original_bytes: fp32 bytes of all parameters of the original model.
        size_bytes: bytes of the whole file in this stage's encoding.
        accuracy_before: test accuracy before the stage (fraction), if measured.
        accuracy_after: test accuracy after the stage (fraction), if measured.
        layers: per-tensor records.
        history: per-epoch training records of the stage's retraining.
        seconds: wall time of the stage.
        settings: the stage's settings as given.
    """

    stage: str
    original_bytes: int = 0
    size_bytes: int = 0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Compression ratio: original fp32 bytes over this stage's file bytes."""
        return self.original_bytes / self.size_bytes if self.size_bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "original_bytes": self.original_bytes,
            "size_bytes": self.size_bytes,
            "ratio": self.ratio,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "seconds": self.seconds,
            "settings": self.settings,
            "history": self.history,
            "layers": [layer.to_dict() for layer in self.layers],
        }
