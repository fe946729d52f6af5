"""Which layer types each method compresses, found by running the methods.

:data:`EXAMPLES` holds one small example of every layer type users bring (fully
connected, convolutions of every kind, recurrent, embedding, attention, transformer,
normalisation, tied and custom parameters).  :func:`support_table` applies each method
to each example and reports, per type, whether the method compressed all of its weight
tensors (``"supported"``), left them dense (``"left dense"``) or whether the type has no
weight matrix to compress (``"no weights"``).  The README's table is this function's
output (``tools/support_table.py``), so it cannot drift from the code.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .layers import compressible_tensors


class CustomParameters(nn.Module):
    """A module that registers its parameters directly (no ``nn.Linear`` inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 16) / 4)
        self.b = nn.Parameter(torch.zeros(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b


class TiedEmbedding(nn.Module):
    """A language-model head whose output projection shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.out = nn.Linear(16, 30, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(tokens))


class _Batched(nn.Module):
    """Runs a recurrent or attention layer and returns its first output only."""

    def __init__(self, layer: nn.Module, attention: bool = False) -> None:
        super().__init__()
        self.layer, self.attention = layer, attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, x, x)[0] if self.attention else self.layer(x)[0]


#: ``{type label: (constructor, example input)}``
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "Linear": (lambda: nn.Linear(16, 12), lambda: torch.randn(3, 16)),
    "Conv1d": (lambda: nn.Conv1d(4, 8, 3), lambda: torch.randn(2, 4, 10)),
    "Conv2d": (lambda: nn.Conv2d(4, 8, 3, padding=1), lambda: torch.randn(2, 4, 6, 6)),
    "Conv2d, grouped (groups=2)": (lambda: nn.Conv2d(4, 8, 3, groups=2), lambda: torch.randn(2, 4, 6, 6)),
    "Conv2d, depthwise": (lambda: nn.Conv2d(8, 8, 3, groups=8), lambda: torch.randn(2, 8, 6, 6)),
    "Conv3d": (lambda: nn.Conv3d(2, 4, 3), lambda: torch.randn(1, 2, 5, 5, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 6, 3), lambda: torch.randn(2, 4, 5, 5)),
    "LSTM (2 layers, bidirectional)": (lambda: _Batched(nn.LSTM(8, 12, num_layers=2, bidirectional=True)),
                                       lambda: torch.randn(5, 2, 8)),
    "GRU": (lambda: _Batched(nn.GRU(8, 12)), lambda: torch.randn(5, 2, 8)),
    "RNN": (lambda: _Batched(nn.RNN(8, 12)), lambda: torch.randn(5, 2, 8)),
    "Embedding": (lambda: nn.Embedding(30, 16), lambda: torch.randint(0, 30, (2, 7))),
    "MultiheadAttention": (lambda: _Batched(nn.MultiheadAttention(16, 4), attention=True),
                           lambda: torch.randn(5, 2, 16)),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0),
                                lambda: torch.randn(5, 2, 16)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(4), lambda: torch.randn(2, 4, 3, 3)),
    "LayerNorm": (lambda: nn.LayerNorm(16), lambda: torch.randn(3, 16)),
    "tied parameters (embedding = output)": (TiedEmbedding, lambda: torch.randint(0, 30, (2, 7))),
    "custom module, own nn.Parameter": (CustomParameters, lambda: torch.randn(3, 16)),
}


def example(label: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A fresh ``(model, input)`` pair of :data:`EXAMPLES`: the layer inside an ``nn.Sequential``
    (as in a user's network), eval mode, seeded."""
    torch.manual_seed(seed)
    build, data = EXAMPLES[label]
    return nn.Sequential(build()).eval(), data()


def _weights(model: nn.Module) -> set[str]:
    return {t.param_name for t in compressible_tensors(model)}


def _file_kinds(model: nn.Module) -> dict[str, str]:
    from ..format.container import encode

    return {r.name: r.kind for r in encode(model)[1]}


def _check(method: str, model: nn.Module, x: torch.Tensor) -> set[str]:
    """The weight tensors (state-dict names) ``method`` compressed in ``model``."""
    from ..format.container import load
    from .quantization.fixed_point import freeze, quantize_linear
    from .lowrank.svd import low_rank
    from .pruning.prune import prune_once, sensitivity, weight_mask
    from .quantization.share import share, shared_weight
    from .quantization.ternary import ternarize

    before = {t.param_name: t.value.detach().clone() for t in compressible_tensors(model)}
    if method == "pruning":
        prune_once(model, sparsity=0.5)
        return {t.param_name for t in compressible_tensors(model) if weight_mask(t.module, t.attr) is not None}
    if method == "post-training pruning (OBS)":
        from .pruning.post_training import prune_post_training

        _, report = prune_post_training(model, [x, x], sparsity=0.5, method="obs")
        return {t.param_name for t in compressible_tensors(model)
                if t.key in report.settings["reconstruction_error"] and weight_mask(t.module, t.attr) is not None}
    if method == "weight sharing":
        share(model, bits=3)
        return {t.param_name for t in compressible_tensors(model) if shared_weight(t.module, t.attr) is not None}
    if method == "Huffman coding + file":
        share(model, bits=3)
        from ..format.container import decode, encode

        data, records = encode(model, infer_shared=False)
        decoded = decode(data).tensors
        coded = {r.name for r in records if r.kind in ("shared", "codes", "alias")}
        return {n for n in coded if n in before and torch.equal(decoded[n], dict(
            (t.param_name, t.value.detach()) for t in compressible_tensors(model))[n])}
    if method == "sensitivity":
        curves = sensitivity(model, lambda m: 0.0, sparsities=(0.5,))
        return {t.param_name for t in compressible_tensors(model) if t.key in curves}
    if method == "fixed point / int8":
        quantize_linear(model, [x], scheme="fixed", weight_bits=8, activation_bits=8, num_batches=1)
        freeze(model)
        return {n for n, k in _file_kinds(model).items() if k == "quant"}
    if method == "ternary / binary":
        ternarize(model, "ttq", keep_first_last=False)
        return {t.param_name for t in compressible_tensors(model)
                if torch.unique(t.value.detach()[t.value.detach() != 0]).numel() <= 2}
    if method == "low rank (SVD)":
        low_rank(model, reduction=2)
        return {n for n in before if n not in _weights(model)}
    if method == "compressed runtime":
        share(model, bits=3)
        import tempfile
        from pathlib import Path

        from ..format.container import save

        with tempfile.TemporaryDirectory() as tmp:
            save(model, Path(tmp) / "m.edlz")
            runtime = load(Path(tmp) / "m.edlz", model=copy.deepcopy(_plain(model)), runtime="compressed",
                           prefer="memory", cache=False)
        with torch.no_grad():
            expected = _plain(model)(x)
            served = runtime(x)
        if not torch.allclose(served, expected, rtol=1e-4, atol=1e-5):
            return set()
        report = runtime.edl_runtime      # served: computed by a compressed kernel, never from a decoded copy
        return {n for n in report.compressed if not report.weights[n].fallbacks
                and not any(r.name.startswith("dense") for r in report.weights[n].chosen.values())}
    raise ValueError(method)


def _plain(model: nn.Module) -> nn.Module:
    from .layers import plain_copy

    return plain_copy(model)


METHODS = ("pruning", "post-training pruning (OBS)", "weight sharing", "Huffman coding + file", "sensitivity", "fixed point / int8",
           "ternary / binary", "low rank (SVD)", "compressed runtime")


def support_table() -> list[dict[str, str]]:
    """Run every method of :data:`METHODS` on every example of :data:`EXAMPLES`.

    Returns:
        One row per layer type: ``{"layer": label, method: "supported" | "left dense" |
        "partly (n of m)" | "no weights"}``.  A method that raises on a type is a bug:
        the error propagates (and the test of the README's table fails) rather than
        becoming a table entry.
    """
    rows = []
    for label in EXAMPLES:
        row = {"layer": label}
        for method in METHODS:
            model, x = example(label)
            weights = _weights(model)
            if not weights:
                row[method] = "no weights"
                continue
            done = _check(method, model, x) & weights
            model(x)  # the compressed model still runs
            row[method] = ("supported" if done == weights else "left dense" if not done
                           else f"partly ({len(done)} of {len(weights)})")
        rows.append(row)
    return rows
