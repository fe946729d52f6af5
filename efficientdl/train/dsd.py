"""Dense-Sparse-Dense training (Han et al., "DSD: Dense-Sparse-Dense Training for Deep
Neural Networks", ICLR'17).

1. **Dense**: train normally.
2. **Sparse**: prune the smallest weights of each layer by magnitude to a target sparsity
   and retrain under the mask (pruned weights stay zero) — the network learns the
   important connections with fewer degrees of freedom.
3. **Re-dense**: lift the mask; the pruned weights restart from zero and the whole network
   is trained again at a lower learning rate, escaping the sparse solution's saddle
   points into a better minimum.

The sparse phase prunes every compressible tensor
(:func:`~efficientdl.compress.layers.compressible_tensors`: Linear and convolution
weights, embeddings, each recurrent gate matrix, custom matrices), so the re-dense phase
lifts the mask of every one of them: the masked tensor ``W ⊙ M`` becomes a plain
parameter holding those values (zeros where ``M`` was 0), free to train again.

:func:`dsd` returns the accuracy after each phase; :func:`dense_baseline` trains the same
network for the same total number of epochs without the sparse phase, for comparison.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .trainer import Trainer, evaluate


def dsd(model: nn.Module, trainer: Trainer, sparsity: Any, epochs: tuple[int, int, int], lr: float,
        redense_lr_scale: float = 0.1, pretrained: bool = False) -> dict:
    """Run the three DSD phases on ``model`` (in place).

    Args:
        model: the network.
        trainer: the training loop (its data, schedule and seed are reused for every phase).
        sparsity: target sparsity of the sparse phase (scalar or per-layer mapping).
        epochs: ``(dense, sparse, re-dense)`` epochs; the dense phase is skipped when
            ``pretrained``.
        lr: learning rate of the dense and sparse phases.
        redense_lr_scale: the re-dense phase trains at ``lr · redense_lr_scale``.
        pretrained: the model is already trained (skip phase 1).

    Returns:
        ``{"dense": acc, "sparse": acc, "redense": acc, "sparsity": {layer: s},
        "history": {phase: per-epoch records}}``.
    """
    from ..compress.layers import compressible_tensors, fold_parametrization, retie, tied_pairs
    from ..compress.pruning.prune import prune_once, weight_mask

    history = {}
    if not pretrained and epochs[0]:
        history["dense"] = trainer.fit(model, epochs=epochs[0], lr=lr, description="DSD dense")
    result = {"dense": evaluate(model, trainer.test_loader)} if trainer.test_loader is not None else {}
    achieved = prune_once(model, sparsity=sparsity)
    if epochs[1]:
        history["sparse"] = trainer.fit(model, epochs=epochs[1], lr=lr, description="DSD sparse")
    if trainer.test_loader is not None:
        result["sparse"] = evaluate(model, trainer.test_loader)
    ties = tied_pairs(model)
    for t in list(compressible_tensors(model)):      # lift every mask: pruned weights restart at zero
        if weight_mask(t.module, t.attr) is not None:
            fold_parametrization(t.module, t.attr)
    retie(ties)
    if epochs[2]:
        history["redense"] = trainer.fit(model, epochs=epochs[2], lr=lr * redense_lr_scale,
                                         description="DSD re-dense")
    if trainer.test_loader is not None:
        result["redense"] = evaluate(model, trainer.test_loader)
    result["sparsity"] = achieved
    result["history"] = history
    return result


def dense_baseline(model: nn.Module, trainer: Trainer, epochs: int, lr: float) -> float:
    """Train ``model`` densely for ``epochs`` (DSD's total) and return its test accuracy."""
    trainer.fit(model, epochs=epochs, lr=lr, description="dense baseline")
    return evaluate(model, trainer.test_loader)
