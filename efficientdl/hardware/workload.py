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


# --------------------------------------------------------------------------- training
#: layer kinds that carry trainable weights and do matrix work (forward = 2·MACs)
WEIGHTED_KINDS = ("conv", "fc", "lstm", "attention")


@dataclass(frozen=True)
class TrainingLayer:
    """One layer of a network as the training-step model reads it, per input sample.

    Built from a torch model by :func:`efficientdl.train.step_workload.training_workload`
    or written down by hand (the hardware models never see torch).

    Attributes:
        name: layer name (``layer1.0.conv1``).
        kind: ``"conv"``, ``"fc"``, ``"lstm"``, ``"attention"`` (weighted: matrix work),
            ``"norm"``, ``"act"``, ``"add"``, ``"pool"`` or ``"other"`` (elementwise).
        group: a coarser label for plots (``layer1``, ``stem``, ``head``).
        macs: multiply-accumulates of the forward pass per sample (0 for elementwise).
        params: trainable parameters of the layer (weights, biases, affine norms).
        input_elements, output_elements: activation elements read and written per sample.
        saved_elements: elements this layer saves for the backward pass per sample that
            no earlier layer has saved already (the sum over layers is the saved total).
        needs_input_grad: whether the backward pass must produce the input gradient
            (False for the first layer: it has no backward-data work).
    """

    name: str
    kind: str
    group: str
    macs: int
    params: int
    input_elements: int
    output_elements: int
    saved_elements: int
    needs_input_grad: bool = True

    @property
    def weighted(self) -> bool:
        """Whether the layer does matrix work on trainable weights."""
        return self.kind in WEIGHTED_KINDS and self.macs > 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainingWorkload:
    """A network for the training-step model: its layers in forward order.

    Attributes:
        name: model name.
        layers: the :class:`TrainingLayer` list, forward order.
        input_shape: one sample's shape (for the report).
    """

    name: str
    layers: tuple[TrainingLayer, ...]
    input_shape: tuple[int, ...] = ()

    @property
    def params(self) -> int:
        """Trainable parameters of all layers."""
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates per sample."""
        return sum(layer.macs for layer in self.layers)

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "params": self.params,
                "macs": self.macs, "layers": [layer.to_dict() for layer in self.layers]}


def training_workload_from_dict(d: dict) -> TrainingWorkload:
    """A :class:`TrainingWorkload` from its :meth:`~TrainingWorkload.to_dict` form (JSON written
    by hand or saved earlier); ``group``, ``saved_elements`` and ``needs_input_grad`` are optional.

    Raises:
        ValueError: a missing or malformed field (the message names it).
    """
    if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
        raise ValueError("expected a mapping with a 'layers' list")
    layers = []
    for i, raw in enumerate(d["layers"]):
        if not isinstance(raw, dict):
            raise ValueError(f"layer {i}: expected a mapping")
        try:
            ints = {k: int(raw.get(k, 0)) for k in ("macs", "params", "input_elements", "output_elements")}
            saved = int(raw.get("saved_elements", raw.get("input_elements", 0)))
        except (TypeError, ValueError):
            raise ValueError(f"layer {i}: counts must be integers") from None
        if any(v < 0 for v in (*ints.values(), saved)):
            raise ValueError(f"layer {i}: counts must be ≥ 0")
        name, kind = str(raw.get("name", f"layer{i}")), raw.get("kind")
        if not isinstance(kind, str):
            raise ValueError(f"layer {i} ({name}): 'kind' is required")
        layers.append(TrainingLayer(name, kind, str(raw.get("group", name)), ints["macs"], ints["params"],
                                    ints["input_elements"], ints["output_elements"], saved,
                                    bool(raw.get("needs_input_grad", i > 0))))
    if not layers:
        raise ValueError("'layers' is empty")
    return TrainingWorkload(str(d.get("name", "workload")), tuple(layers), tuple(d.get("input_shape", ())))
