"""A neutral description of the work of a network: what the hardware models read.

``compress.workload`` builds one from a model (or a compressed file) and an input
shape; the papers' layers can be written down by hand.  Nothing here knows torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerWorkload:
    """The work and storage of one layer for one input sample.

    Attributes:
        name: layer name.
        kind: ``"fc"``, ``"conv"`` or another label.
        macs: dense multiply-accumulates per sample.
        weights: weight count of the dense layer.
        nonzero_weights: weights left after pruning.
        weight_bits: storage bits per *stored* weight, index overhead included (32 for
            dense fp32; for a Deep Compression layer, codebook index + relative index).
        input_elements, output_elements: activations read and written per sample.
        activation_bits: bits per activation.
        input_density: fraction of nonzero input activations.
    """

    name: str
    kind: str
    macs: int
    weights: int
    nonzero_weights: int
    weight_bits: float
    input_elements: int
    output_elements: int
    activation_bits: int = 32
    input_density: float = 1.0

    @property
    def weight_bytes(self) -> float:
        """Bytes of the stored weights."""
        return self.nonzero_weights * self.weight_bits / 8

    @property
    def weight_density(self) -> float:
        return self.nonzero_weights / self.weights if self.weights else 0.0

    @property
    def effective_macs(self) -> float:
        """MACs actually needed per sample: skipping zero weights and, where the layer
        reuses no input (fc), zero activations."""
        m = self.macs * self.weight_density
        return m * self.input_density if self.kind == "fc" else m

    def activation_bytes(self, batch: int) -> float:
        """Bytes of input and output activations for ``batch`` samples."""
        return batch * (self.input_elements + self.output_elements) * self.activation_bits / 8

    def to_dict(self) -> dict:
        return asdict(self) | {"weight_bytes": self.weight_bytes}
