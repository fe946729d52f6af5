"""The trained fp32 starting point shared by the method benchmarks."""

from __future__ import annotations

import pathlib

from efficientdl import data, models, train

#: dense training of the registry models (the shipped recipes' dense stage)
DENSE_SCHEDULE = {"lenet300": (20, 0.05), "lenet5": (15, 0.05)}


def dense_model(name: str, checkpoint: pathlib.Path | None):
    """``(model, dataset, accuracy)``: the checkpoint when it exists, else a model trained
    on Fashion-MNIST by the library's trainer (seed 0)."""
    train.set_seed(0)
    ds = data.load("fashion-mnist", fallback=False)
    if checkpoint and checkpoint.exists():
        model = train.load_checkpoint(checkpoint)
    else:
        epochs, lr = DENSE_SCHEDULE[name]
        model = models.create(name)
        train.Trainer(ds.train, ds.test, epochs=epochs, lr=lr, seed=0, progress=False).fit(model)
    return model, ds, train.evaluate(model, ds.test)


def fashion_tensors(train_size: int):
    """``(dataset, x, y)``: Fashion-MNIST with the first ``train_size`` images of a seeded
    permutation as two tensors (for the distributed benchmarks, which shard them)."""
    import torch

    ds = data.load("fashion-mnist", fallback=False, train_subset=train_size)
    xs, ys = zip(*list(ds.train))
    return ds, torch.cat(xs), torch.cat(ys)
